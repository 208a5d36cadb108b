"""The client's exceptions: every way a call to a Clarion server can fail, in one hierarchy.

`APIError` is an answer from the server (its JSON error body: `{"error": {"code", "message"}}`, and
its `X-Request-Id`), one subclass per status a client handles differently. `ConnectionFailed` is no
answer at all, and says whether the request may have been processed. `JobFailed` and
`WaitTimedOut` end a wait for a job or an analysis.
"""

from __future__ import annotations

import json
from typing import Any


class ClarionClientError(Exception):
    """Base class of everything the client raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class APIError(ClarionClientError):
    """The server answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # the server's stable, machine-readable code ("invalid_request", ...)
        self.request_id = request_id  # X-Request-Id: the server's log line ends with `id=<it>`
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), if it did

    def __str__(self) -> str:
        where = f", request id {self.request_id}" if self.request_id else ""
        return f"{self.status} {self.code}: {self.message}{where}"


class BadRequest(APIError):
    """400: the request is invalid (an unknown option, an out-of-range value, an empty text...)."""


class Unauthorized(APIError):
    """401: the server has API keys and the call carried none, or a wrong one."""


class Forbidden(APIError):
    """403: the deployment does not allow it (an S3 location outside S3_ALLOWED_PREFIXES)."""


class IdempotencyConflict(APIError):
    """422: the Idempotency-Key was already used with another request."""


class NotFound(APIError):
    """404: no such job or analysis (or it belongs to another API key, or was removed)."""


class NotAcceptable(APIError):
    """406: the server cannot answer in the type asked for."""


class PayloadTooLarge(APIError):
    """413: the body is over the server's limit (MAX_REQUEST_BYTES, ANALYSIS_MAX_BYTES/TEXTS)."""


class UnsupportedMediaType(APIError):
    """415: the body's content type is not one the route reads."""


class RateLimited(APIError):
    """429: a proxy in front of the server limits the rate (retried, see RetryPolicy)."""


class ServiceUnavailable(APIError):
    """503: the model is loading, the job backend is away, or the request ran past its deadline
    (code `explanation_timeout`: ask for fewer max_evals or submit a job)."""


class ServerError(APIError):
    """Any other 5xx: a failure of the server itself."""


class IncompatibleServer(ClarionClientError):
    """The server speaks a major version of Clarion's API this client does not."""


class UnexpectedResponse(ClarionClientError):
    """A success status whose body is not what Clarion sends (a proxy's page, a cut body)."""


class ConnectionFailed(ClarionClientError):
    """No answer: the connection failed or was dropped.

    `sent` is False when the request never reached the server whole (the connection was refused or
    broke while sending): nothing happened there. True when it went out and no answer came back:
    the server may have processed it, so a POST that creates a job may have created one."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class TimedOut(ConnectionFailed):
    """The server took longer than the call's timeout to connect or to answer."""


class JobFailed(ClarionClientError):
    """A waited-for job or analysis ended failed or cancelled; `job` is its last state."""

    def __init__(self, job: Any) -> None:
        error = job.error or {}
        reason = f": {error['message']}" if error.get("message") else ""
        super().__init__(f"{job.kind} {job.id} {job.status}{reason}")
        self.job = job
        self.code = str(error.get("code", job.status))  # "cancelled" for a cancelled one


class WaitTimedOut(ClarionClientError, TimeoutError):
    """The wait's own deadline passed while the job was still queued or running; `job` is its last
    state (the job goes on: wait again, or delete it)."""

    def __init__(self, job: Any, seconds: float) -> None:
        super().__init__(f"{job.kind} {job.id} still {job.status} after {seconds:g} s")
        self.job = job


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    406: NotAcceptable,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: IdempotencyConflict,
    429: RateLimited,
    503: ServiceUnavailable,
}


def api_error(
    status: int, body: bytes, request_id: str | None, retry_after: float | None, reason: str = ""
) -> APIError:
    """The exception for an error answer: the server's JSON error body, or (a proxy's page) the
    status and its reason phrase."""
    code, message = f"http_{status}", reason or f"HTTP {status}"
    try:
        detail = json.loads(body)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, KeyError, TypeError):
        pass
    if status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIError
    return cls(status, code, message, request_id, retry_after)
