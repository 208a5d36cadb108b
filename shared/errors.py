"""Clarion's exception hierarchy; api/errors.py maps each class to an HTTP status in one place."""

from __future__ import annotations


class ClarionError(Exception):
    """Base class. `code` is the stable machine-readable error code sent to clients."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(ClarionError):
    """A setting is missing or wrong; start-up stops with this one-line message."""

    code = "configuration_error"


class InvalidRequest(ClarionError):
    """The request is malformed, wrongly typed or out of range."""

    code = "invalid_request"


class Unauthorized(ClarionError):
    """API keys are configured and the request carried none, or a wrong one."""

    code = "unauthorized"


class Forbidden(ClarionError):
    """The request names something this deployment does not allow (an S3 location outside
    S3_ALLOWED_PREFIXES); the message names the setting."""

    code = "forbidden"


class NoStorageAccess(Forbidden):
    """The request names an S3 location and this deployment has no S3 access at all (no credentials):
    nothing a retry changes, and nothing the caller can do but send the data in the request."""

    code = "no_s3_access"


class IdempotencyConflict(ClarionError):
    """An Idempotency-Key already used with another request body."""

    code = "idempotency_key_reused"


class TooBusy(ClarionError):
    """A limit on concurrent work is reached (ANALYSIS_MAX_RUNNING); try again later."""

    code = "too_many_running"

    def __init__(self, message: str, retry_after_s: int = 10) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnsupportedMediaType(ClarionError):
    code = "unsupported_media_type"


class NotAcceptable(ClarionError):
    """The client accepts none of the response types Clarion can send."""

    code = "not_acceptable"


class NotFound(ClarionError):
    code = "not_found"


class PayloadTooLarge(ClarionError):
    """More than a limit allows (an analysis's texts or bytes)."""

    code = "payload_too_large"


class StorageUnavailable(ClarionError):
    """The object store (S3) could not be reached, or refused Clarion's own credentials."""

    code = "storage_unavailable"


class ModelNotReady(ClarionError):
    """The model is still loading (or failed to load) in this worker."""

    code = "model_not_ready"

    def __init__(self, message: str, loading: bool = True) -> None:
        super().__init__(message)
        self.loading = loading  # False: the load failed, and asking again will not change that


class ExplanationTimeout(ClarionError):
    """A synchronous explanation would run past the request timeout; it was stopped."""

    code = "explanation_timeout"


class JobBackendUnavailable(ClarionError):
    """Redis / the Celery broker cannot be reached; classification still works."""

    code = "job_backend_unavailable"


class ModelLoadError(ClarionError):
    """The model could not be fetched or loaded."""

    code = "model_load_error"


class UnsafeArchive(ModelLoadError):
    """A model archive tries to write outside its target directory or holds special files."""

    code = "unsafe_archive"


class JobCancelled(ClarionError):
    """The job was cancelled (DELETE) while it ran; its queued work was dropped."""

    code = "cancelled"


class EngineStopped(ClarionError):
    """The process is shutting down; no more forward passes will run."""

    code = "engine_stopped"


class PredictorError(ClarionError):
    """The remote model (MODEL_URL) answered badly: an error status, a body that is not scores for
    its labels, or no connection; the message names the predictor."""

    code = "bad_gateway"


class PredictorTimeout(PredictorError):
    """The remote model (MODEL_URL) did not answer within REMOTE_TIMEOUT."""

    code = "predictor_timeout"
