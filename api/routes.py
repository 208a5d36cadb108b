"""HTTP views: translate requests into calls on the service and job queue, and results back to JSON."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from prometheus_client import CONTENT_TYPE_LATEST

from api import openapi as doc
from api.bodies import job_body
from api.codecs import Invocation, decode_invocation
from api.context import data_plane
from api.invocations import RESULT_TYPES, clarify, html_response, html_texts, invoke_records, shaped
from api.negotiation import (
    CUSTOM_ATTRIBUTES,
    HTML,
    JSON,
    REPLAYED,
    CustomAttributes,
    body_options,
    custom_attribute_options,
    custom_attributes,
    echo_attributes,
    idempotency,
    request_id,
    response_type,
)
from api.operations import documented
from api.records import is_record_type
from shared import metrics
from shared.errors import Unauthorized
from shared.io.inputs import restored
from shared.io.results import body
from shared.render.html import job_document, page_document
from shared.runtime.engine import Ticket

bp = Blueprint("clarion", __name__)
TIMEOUT_MESSAGE = (
    "the request did not finish within the request timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT); ask for "
    "fewer max_evals or fewer texts, or submit it as a job (POST /explanations with a broker configured)"
)


@bp.before_app_request
def identify() -> None:
    """Every response carries a request id: the client's X-Request-Id, or a new one."""
    g.request_id = request_id(request)
    g.arrived = time.monotonic()


@bp.after_app_request
def stamp(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    if request.endpoint == "clarion.invocations":  # SageMaker passes these back to the caller
        attributes = g.get("attributes") or CustomAttributes()
        response.headers[CUSTOM_ATTRIBUTES] = echo_attributes(g.get("request_id", ""), attributes)
    route = request.url_rule.rule if request.url_rule else "unmatched"  # never the raw path: ids
    metrics.REQUESTS.labels(route=route, method=request.method, status=str(response.status_code)).inc()
    metrics.REQUEST_SECONDS.labels(route=route).observe(time.monotonic() - g.get("arrived", time.monotonic()))
    return response


@bp.before_app_request
def start_the_clock() -> None:
    """A request's deadline starts when it arrives, so classification time counts too."""
    g.ticket = Ticket.within(data_plane().settings.timeout_s, TIMEOUT_MESSAGE)


# /ping for health checks; / is the static page, which sends the key it is given with each call;
# /execution-parameters is what Batch Transform asks before it sends work; KServe's liveness and
# readiness paths are what kubelet probes ask, and probes send no key.
_OPEN_ENDPOINTS = {
    "clarion.ping",
    "clarion.page",
    "clarion.execution_parameters",
    "kserve_v1.model_ready",
    "kserve_v2.live",
    "kserve_v2.ready",
    "kserve_v2.model_ready",
}


@bp.before_app_request
def authenticate() -> None:
    """With API_KEYS set, every route but the open ones (health, readiness, the page) needs
    `Authorization: Bearer <key>`."""
    keys = data_plane().settings.api_keys
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


def request_ticket() -> Ticket:
    """This request's deadline (SAGEMAKER_MODEL_SERVER_TIMEOUT from its arrival)."""
    return g.ticket


def _wants_html() -> bool:
    return response_type(request, (JSON, HTML)) == HTML


@bp.get("/")
@documented(get=doc.page)
def page() -> Response:
    return html_response(page_document)


@bp.get("/ping")
@documented(get=doc.ping)
def ping() -> tuple[Response, int]:
    plane = data_plane()
    return jsonify(body(plane.health())), 200 if plane.ready else 503


@bp.get("/openapi.json")
@documented(get=doc.document)
def openapi() -> Any:
    return jsonify(doc.openapi_document(current_app))


@bp.get("/metrics")
@documented(get=doc.metrics)
def metrics_view() -> Response:
    """Prometheus: every gunicorn worker's metrics (multiprocess mode), and the jobs waiting."""
    return Response(
        metrics.exposition(pending_jobs=data_plane().pending_jobs()), content_type=CONTENT_TYPE_LATEST
    )


@bp.get("/execution-parameters")
@documented(get=doc.execution_parameters)
def execution_parameters() -> Any:
    """What SageMaker Batch Transform asks before it sends work (SAGEMAKER_* settings)."""
    settings = data_plane().settings
    return jsonify(
        {
            "MaxConcurrentTransforms": settings.concurrent_transforms,
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": settings.max_payload_mb,
        }
    )


@bp.post("/invocations")
@documented(post=doc.invoke)
def invocations() -> Any:
    settings = data_plane().settings
    g.attributes = custom_attributes(request)
    options = g.attributes.options
    ticket = request_ticket()
    if is_record_type(request.mimetype):
        return invoke_records(request, options, ticket, g.attributes.pair_column)
    options = body_options(g.attributes)  # a JSON or text body: no pair_column to read
    kind = response_type(request, RESULT_TYPES)
    if kind == JSON and settings.clarify_mode:  # the endpoint speaks Clarify's shape to every client
        return jsonify(clarify(decode_invocation(request, settings).texts, request, ticket))
    invocation = decode_invocation(request, settings, options)
    parameters = invocation.parameters
    if parameters.explain and parameters.asynchronous:
        return _submit(invocation, ticket)
    return shaped(
        kind,
        invocation.texts,
        data_plane().results(invocation.texts, parameters, ticket),
        invocation.single,
    )


@bp.post("/explanations")
@documented(post=doc.submit_job)
def create_explanation() -> Any:
    invocation = decode_invocation(request, data_plane().settings, custom_attribute_options(request))
    return _submit(invocation, request_ticket())


@bp.get("/explanations/<job_id>")
@documented(get=doc.get_job, parameters={"job_id": doc.JOB_ID})
def get_explanation(job_id: str) -> Any:
    job = data_plane().job(job_id, g.owner)
    shown = body(job_body(job))
    if _wants_html():
        texts = html_texts([restored(text) for text in job.texts])
        return html_response(lambda nonce: job_document(shown, texts, nonce=nonce))
    return jsonify(shown)


@bp.delete("/explanations/<job_id>")
@documented(delete=doc.delete_job, parameters={"job_id": doc.JOB_ID})
def delete_explanation(job_id: str) -> Any:
    """A queued or running job is cancelled (200, the job as it now is: cancelled); a finished one is
    removed with its result (204: a GET is a 404 from now on)."""
    job = data_plane().cancel_job(job_id, g.owner)
    if job is None:
        return Response(status=204)
    return jsonify(body(job_body(job)))


def _submit(invocation: Invocation, ticket: Ticket) -> Any:
    """Classify the texts, then queue a job that explains them (202 + Location), or in single-process
    mode run it now (200, finished job). With an Idempotency-Key used before with the same request,
    the job it made, with the same status."""
    plane = data_plane()
    job, replayed = plane.submit_job(
        invocation.texts,
        invocation.single,
        invocation.parameters,
        ticket,  # inline jobs stop at the request's deadline too
        g.owner,
        idempotency(request, g.owner),
    )
    response = jsonify(body(job_body(job)))
    if replayed:
        response.headers[REPLAYED] = "true"
    if not plane.jobs.asynchronous:
        return response, 200
    response.headers["Location"] = url_for("clarion.get_explanation", job_id=job.id)
    return response, 202
