"""The OpenAPI 3.1 document, generated from the same pydantic models that validate requests and
shape responses (shared/schemas.py, shared/results.py)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from shared.results import ErrorBody, Health, JobBody, TextResult
from shared.schemas import HuggingFaceBody, SeedBody

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _with_html(response: dict[str, Any], what: str) -> dict[str, Any]:
    """The same response as a self-contained HTML view, for `Accept: text/html`."""
    html = {"schema": {"type": "string", "description": f"{what} (with Accept: text/html)"}}
    return {**response, "content": {**response["content"], "text/html": html}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("ErrorBody"))


def _body() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            _JSON: {"schema": {"oneOf": [_ref("SeedBody"), _ref("HuggingFaceBody")]}},
            "text/plain": {"schema": {"type": "string", "description": "one text"}},
        },
    }


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
                    "requestBody": _body(),
                    "responses": {
                        "200": _with_html(
                            _json(
                                "one result for one text, a list for a list; with explain + async and "
                                "no broker, the finished job",
                                {"oneOf": [*results["oneOf"], _ref("JobBody")]},
                            ),
                            "the results drawn: scores, shaded units, label selector",
                        ),
                        "202": _json("explain + async: a queued job", _ref("JobBody")),
                        **_REQUEST_ERRORS,
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
                "delete": {"summary": "cancel a job", "responses": {"200": _JOB, **_JOB_ERRORS}},
            },
        },
        "components": {"schemas": dict(schemas["$defs"])},
    }
