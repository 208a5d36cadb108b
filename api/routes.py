"""HTTP views: translate requests into calls on the service and job queue, and results back to JSON."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from api.codecs import Invocation, decode_invocation, shape_like_request
from api.openapi import openapi_document
from shared.jobs import JobQueue, JobRecord, new_record
from shared.results import text_response
from shared.service import ClarionService
from shared.settings import Settings

bp = Blueprint("clarion", __name__)


def _service() -> ClarionService:
    return current_app.extensions["clarion.service"]


def _jobs() -> JobQueue:
    return current_app.extensions["clarion.jobs"]


def _settings() -> Settings:
    return current_app.extensions["clarion.settings"]


@bp.get("/ping")
def ping() -> tuple[Response, int]:
    service = _service()
    return jsonify(service.status()), 200 if service.ready else 503


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document())


@bp.post("/invocations")
def invocations() -> Any:
    invocation = decode_invocation(request, _settings())
    service = _service()
    classifications = service.classify(invocation.texts)
    parameters = invocation.parameters
    if parameters.explain and parameters.asynchronous:
        return _submit(invocation, classifications)
    explanations: list[Any] = [None] * len(invocation.texts)
    if parameters.explain:
        deadline = request_deadline(_settings())
        explanations = service.explain(invocation.texts, parameters.explain_options(), deadline)
    model_id = service.model.model_id
    items = [text_response(c, e, model_id) for c, e in zip(classifications, explanations, strict=True)]
    return jsonify(shape_like_request(invocation, items))


@bp.post("/explanations")
def create_explanation() -> Any:
    invocation = decode_invocation(request, _settings())
    return _submit(invocation, _service().classify(invocation.texts))


@bp.get("/explanations/<job_id>")
def get_explanation(job_id: str) -> Any:
    return jsonify(_jobs().get(job_id).public())


@bp.delete("/explanations/<job_id>")
def cancel_explanation(job_id: str) -> Any:
    return jsonify(_jobs().cancel(job_id).public())


def request_deadline(settings: Settings) -> float:
    """Synchronous explanations stop at the request timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT)."""
    return time.monotonic() + settings.timeout_s


def _submit(invocation: Invocation, classifications: list[Any]) -> Any:
    """Queue a job (202 + Location), or in single-process mode run it now (200, finished job)."""
    jobs = _jobs()
    record: JobRecord = new_record(
        _service().model.model_id,
        invocation.texts,
        invocation.single,
        invocation.parameters.explain_options(),
        classifications,
    )
    record = jobs.submit(record)
    response = jsonify(record.public())
    if not jobs.asynchronous:
        return response, 200
    response.headers["Location"] = url_for("clarion.get_explanation", job_id=record.id)
    return response, 202
