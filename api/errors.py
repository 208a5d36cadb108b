"""The one place errors become HTTP: Clarion's exceptions and Werkzeug's map to JSON bodies (on the
KServe protocols' paths, in their shape)."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from api.bodies import ErrorBody, ProtocolErrorBody, error_detail
from api.kserve import speaks_kserve
from shared.errors import (
    ClarionError,
    ExplanationTimeout,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    JobBackendUnavailable,
    ModelNotReady,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    PredictorError,
    PredictorTimeout,
    StorageUnavailable,
    TooBusy,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

STATUS_OF: dict[type[ClarionError], int] = {
    InvalidRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    NotAcceptable: 406,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    IdempotencyConflict: 422,
    TooBusy: 429,
    ModelNotReady: 503,
    ExplanationTimeout: 503,
    JobBackendUnavailable: 503,
    StorageUnavailable: 503,
    PredictorError: 502,  # a remote model (MODEL_URL) answered badly
    PredictorTimeout: 504,  # or not in time
}

# Seconds a client should wait before it tries again, on the 503s that pass by themselves: a model
# loading, Redis or S3 away for a moment. A request past its deadline would only time out again.
RETRY_AFTER_S: dict[type[ClarionError], int] = {
    ModelNotReady: 5,
    JobBackendUnavailable: 2,
    StorageUnavailable: 2,
}


def error_body(status: int, code: str, message: str) -> tuple[Response, int]:
    """The same status and message everywhere; KServe's and Triton's clients read `error` as the
    message itself, so their paths carry no code."""
    if speaks_kserve(request.path):
        return jsonify(ProtocolErrorBody(error=message).model_dump(mode="json")), status
    return jsonify(ErrorBody.model_validate(error_detail(code, message)).model_dump(mode="json")), status


def _status_for(exc: ClarionError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]  # type: ignore[index]
    return 500


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ClarionError)
    def clarion_error(exc: ClarionError) -> tuple[Response, int]:
        status = _status_for(exc)
        if status >= 500 and status != 503:
            log.error("request failed: %s", exc.message)
        response, status = error_body(status, exc.code, exc.message)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="clarion"'
        retry_after = next((RETRY_AFTER_S[c] for c in type(exc).__mro__ if c in RETRY_AFTER_S), None)
        if isinstance(exc, TooBusy):
            retry_after = exc.retry_after_s
        if retry_after is not None and getattr(exc, "loading", True):
            response.headers["Retry-After"] = str(retry_after)
        return response, status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if status == 413:
            limit = "ANALYSIS_MAX_BYTES" if request.path.startswith("/analyses") else "MAX_REQUEST_BYTES"
            message = f"the request body is larger than the limit ({limit})"
        response, status = error_body(status, code, message)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        # Never a stack trace in a response; the log keeps it.
        log.exception("unexpected error")
        return error_body(500, "internal_error", "internal error; see the server log")
