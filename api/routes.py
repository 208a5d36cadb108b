"""HTTP views: translate requests into calls on the service and job queue, and results back to JSON."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for

from api.codecs import Invocation, decode_invocation, shape_like_request
from api.openapi import openapi_document
from api.render import content_security_policy, explanation_document, job_document, new_nonce, page_document
from shared.engine import Ticket
from shared.errors import NotFound, Unauthorized
from shared.explainer import check_options
from shared.jobs import JobQueue, JobRecord, new_record
from shared.results import body, text_response
from shared.service import ClarionService
from shared.settings import Settings

bp = Blueprint("clarion", __name__)
TIMEOUT_MESSAGE = (
    "the request did not finish within the request timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT); ask for "
    "fewer max_evals or fewer texts, or submit it as a job (POST /explanations with a broker configured)"
)


@bp.before_app_request
def start_the_clock() -> None:
    """A request's deadline starts when it arrives, so classification time counts too."""
    g.ticket = Ticket.within(_settings().timeout_s, TIMEOUT_MESSAGE)


# /ping for health checks; / is the static page, which sends the key it is given with each call.
_OPEN_ENDPOINTS = {"clarion.ping", "clarion.page"}


@bp.before_app_request
def authenticate() -> None:
    """With API_KEYS set, every route but /ping needs `Authorization: Bearer <key>`."""
    keys = _settings().api_keys
    g.owner = None
    if not keys or request.endpoint in _OPEN_ENDPOINTS:
        return
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented = presented.strip()
    # Compare with every key, in constant time each, so timing tells nothing about any of them.
    matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]
    if scheme.lower() != "bearer" or not any(matches):
        raise Unauthorized("a valid API key is required: send the header Authorization: Bearer <key>")
    g.owner = key_owner(presented)


def key_owner(key: str) -> str:
    """Who owns the jobs a key submits: a digest of the key, never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _own_job(job_id: str) -> JobRecord:
    """The job, if the caller may see it: with API keys, only the key that submitted it may."""
    record = _jobs().get(job_id)
    if record.owner != g.owner:
        raise NotFound(f"no explanation job {job_id!r}")
    return record


def request_ticket() -> Ticket:
    """This request's deadline (SAGEMAKER_MODEL_SERVER_TIMEOUT from its arrival)."""
    return g.ticket


def _service() -> ClarionService:
    return current_app.extensions["clarion.service"]


def _jobs() -> JobQueue:
    return current_app.extensions["clarion.jobs"]


def _settings() -> Settings:
    return current_app.extensions["clarion.settings"]


def _wants_html() -> bool:
    """HTML only when the client prefers it to JSON (a browser does; `*/*` and no Accept get JSON)."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _html(render: Any) -> Response:
    """An HTML response whose inline script and style run under a per-response CSP nonce."""
    nonce = new_nonce()
    response = Response(render(nonce), mimetype="text/html")
    response.headers["Content-Security-Policy"] = content_security_policy(nonce)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.vary.add("Accept")
    return response


@bp.get("/")
def page() -> Response:
    return _html(page_document)


@bp.get("/ping")
def ping() -> tuple[Response, int]:
    service = _service()
    return jsonify(body(service.status())), 200 if service.ready else 503


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(openapi_document())


@bp.post("/invocations")
def invocations() -> Any:
    invocation = decode_invocation(request, _settings())
    service = _service()
    classifications = service.classify(invocation.texts, request_ticket(), invocation.parameters.long_text)
    parameters = invocation.parameters
    if parameters.explain and parameters.asynchronous:
        return _submit(invocation, classifications)
    explanations: list[Any] = [None] * len(invocation.texts)
    if parameters.explain:
        explanations = service.explain(invocation.texts, parameters.explain_options(), request_ticket())
    model_id = service.model.model_id
    items = [text_response(c, e, model_id) for c, e in zip(classifications, explanations, strict=True)]
    results = [body(item) for item in items]
    if _wants_html():
        return _html(lambda nonce: explanation_document(invocation.texts, results, nonce=nonce))
    return jsonify(shape_like_request(invocation, results))


@bp.post("/explanations")
def create_explanation() -> Any:
    invocation = decode_invocation(request, _settings())
    parameters = invocation.parameters
    return _submit(invocation, _service().classify(invocation.texts, request_ticket(), parameters.long_text))


@bp.get("/explanations/<job_id>")
def get_explanation(job_id: str) -> Any:
    record = _own_job(job_id)
    job = body(record.public())
    if _wants_html():
        return _html(lambda nonce: job_document(job, record.texts, nonce=nonce))
    return jsonify(job)


@bp.delete("/explanations/<job_id>")
def cancel_explanation(job_id: str) -> Any:
    _own_job(job_id)
    return jsonify(body(_jobs().cancel(job_id).public()))


def _submit(invocation: Invocation, classifications: list[Any]) -> Any:
    """Queue a job (202 + Location), or in single-process mode run it now (200, finished job)."""
    jobs = _jobs()
    options = invocation.parameters.explain_options()
    check_options(_service().model, options)  # a job that cannot succeed is a 400 now, not a failure later
    record: JobRecord = new_record(
        _service().model.model_id,
        invocation.texts,
        invocation.single,
        options,
        classifications,
        owner=g.owner,
    )
    record = jobs.submit(record)
    response = jsonify(body(record.public()))
    if not jobs.asynchronous:
        return response, 200
    response.headers["Location"] = url_for("clarion.get_explanation", job_id=record.id)
    return response, 202
