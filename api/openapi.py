"""The OpenAPI 3.1 document, generated from the same pydantic models that validate requests and
shape responses (shared/io/schemas.py, shared/io/results.py)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from api.bodies import ErrorBody, JobBody
from api.clarify import ClarifyResponse
from shared.io.results import Health, TextResult
from shared.io.schemas import HuggingFaceBody, SeedBody

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _with_html(response: dict[str, Any], what: str) -> dict[str, Any]:
    """The same response as a self-contained HTML view, for `Accept: text/html`."""
    html = {"schema": {"type": "string", "description": f"{what} (with Accept: text/html)"}}
    return {**response, "content": {**response["content"], "text/html": html}}


def _as_records(response: dict[str, Any]) -> dict[str, Any]:
    """/invocations' other response types: a line per text (JSON Lines, CSV), and Clarify's JSON."""
    lines = "one JSON object per text or record, in order (a record that cannot be read: its error)"
    content = {
        _JSON: {"schema": {"oneOf": [response["content"][_JSON]["schema"], _ref("ClarifyResponse")]}},
        "application/jsonlines": {"schema": {"type": "string", "description": lines}},
        "text/csv": {"schema": {"type": "string", "description": "one line per text: label,score"}},
    }
    return {**response, "content": {**response["content"], **content}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("ErrorBody"))


def _body(records: bool = False) -> dict[str, Any]:
    """A request body: JSON or text; with `records`, also JSON Lines and CSV (/invocations only)."""
    content = {
        _JSON: {"schema": {"oneOf": [_ref("SeedBody"), _ref("HuggingFaceBody")]}},
        "text/plain": {"schema": {"type": "string", "description": "one text"}},
    }
    if records:
        content |= {
            "application/jsonlines": {
                "schema": {
                    "type": "string",
                    "description": 'one record per line: {"features": ["text"]} (Clarify), {"text": ...}, '
                    '{"data": ...} or {"inputs": ...}',
                }
            },
            "text/csv": {
                "schema": {"type": "string", "description": "one text per record, in the first column"}
            },
        }
    return {"required": True, "content": content}


_UNAUTHORIZED = {"401": _error("API_KEYS are set and the request has no valid Authorization: Bearer key")}
_REQUEST_ERRORS = {
    "400": _error("malformed JSON, wrong types, empty texts, out-of-range options, unknown labels"),
    **_UNAUTHORIZED,
    "413": _error("body larger than MAX_REQUEST_BYTES"),
    "415": _error("content type other than JSON or text"),
    "503": _error("model loading, job backend unavailable, or past the request timeout"),
}
_JOB = _json("the job", _ref("JobBody"))
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
_JOB_ERRORS = {
    **_UNAUTHORIZED,
    "406": _error("the Accept header allows neither JSON nor HTML"),
    "404": _error("no such job (or not the caller's)"),
    "503": _error("job backend unavailable"),
}


@cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (SeedBody, "validation"),
            (HuggingFaceBody, "validation"),
            (TextResult, "serialization"),
            (JobBody, "serialization"),
            (ErrorBody, "serialization"),
            (Health, "serialization"),
            (ClarifyResponse, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    results = {"oneOf": [_ref("TextResult"), {"type": "array", "items": _ref("TextResult")}]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Clarion", "version": "0.1.0", "description": "Text classification that says why."},
        "paths": {
            "/": {
                "get": {
                    "summary": "the web page: type a text, see it classified and explained",
                    "responses": {
                        "200": {
                            "description": "a static HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/ping": {
                "get": {
                    "summary": "health of this worker",
                    "responses": {
                        "200": _json("model loaded and warm", _ref("Health")),
                        "503": _json("model loading or failed to load", _ref("Health")),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": _json("OpenAPI 3.1", {"type": "object"}), **_UNAUTHORIZED},
                }
            },
            "/invocations": {
                "post": {
                    "summary": "classify, and explain when asked",
                    "requestBody": _body(records=True),
                    "responses": {
                        "200": _with_html(
                            _as_records(
                                _json(
                                    "one result for one text, a list for a list; with explain + async and "
                                    "no broker, the finished job; Clarify's shape for a JSON Lines or CSV "
                                    "body with Accept: application/json (or CLARIFY_MODE)",
                                    {"oneOf": [*results["oneOf"], _ref("JobBody")]},
                                )
                            ),
                            "the results drawn: scores, shaded units, label selector",
                        ),
                        "406": _error("the Accept header allows none of the response types"),
                        "202": _json("explain + async: a queued job", _ref("JobBody")),
                        **_REQUEST_ERRORS,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of every process of this server",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format 0.0.4",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_UNAUTHORIZED,
                    },
                }
            },
            "/execution-parameters": {
                "get": {
                    "summary": "what SageMaker Batch Transform asks before it sends work",
                    "responses": {
                        "200": _json(
                            "from SAGEMAKER_MAX_CONCURRENT_TRANSFORMS, SAGEMAKER_BATCH_STRATEGY, "
                            "SAGEMAKER_MAX_PAYLOAD_IN_MB",
                            {
                                "type": "object",
                                "properties": {
                                    "MaxConcurrentTransforms": {"type": "integer"},
                                    "BatchStrategy": {"enum": ["MULTI_RECORD", "SINGLE_RECORD"]},
                                    "MaxPayloadInMB": {"type": "integer"},
                                },
                                "required": ["MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB"],
                            },
                        )
                    },
                }
            },
            "/explanations": {
                "post": {
                    "summary": "submit an explanation job",
                    "requestBody": _body(),
                    "responses": {"200": _JOB, "202": _JOB, **_REQUEST_ERRORS},
                }
            },
            "/explanations/{job_id}": {
                "parameters": [_JOB_ID],
                "get": {
                    "summary": "a job",
                    "responses": {
                        "200": _with_html(_JOB, "the job's explanation, or its status"),
                        **_JOB_ERRORS,
                    },
                },
                "delete": {
                    "summary": "cancel a queued or running job (200: now cancelled); remove a finished one, "
                    "record and result (204: a GET is then a 404)",
                    "responses": {
                        "200": _JOB,
                        "204": {"description": "the finished job was removed"},
                        **_JOB_ERRORS,
                    },
                },
            },
        },
        "components": {"schemas": dict(schemas["$defs"])},
    }
