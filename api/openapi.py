"""The OpenAPI 3.1 document, generated from the same pydantic schemas that validate requests."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from shared.schemas import HuggingFaceBody, SeedBody

_JSON = "application/json"


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _body() -> dict[str, Any]:
    one_of = [{"$ref": "#/components/schemas/SeedBody"}, {"$ref": "#/components/schemas/HuggingFaceBody"}]
    return {
        "required": True,
        "content": {
            _JSON: {"schema": {"oneOf": one_of}},
            "text/plain": {"schema": {"type": "string", "description": "one text"}},
        },
    }


_REQUEST_ERRORS = {
    "400": _error("malformed JSON, wrong types, empty texts, out-of-range options"),
    "413": _error("body larger than MAX_REQUEST_BYTES"),
    "415": _error("content type other than JSON or text"),
    "503": _error("model loading, job backend unavailable, or explanation past the request timeout"),
}
_JOB = {"description": "the job", "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Job"}}}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


@cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(SeedBody, "validation"), (HuggingFaceBody, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    components = dict(schemas["$defs"])
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    }
    components["Job"] = {
        "type": "object",
        "required": ["id", "status", "submitted_at", "finished_at", "prediction"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
            "submitted_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "prediction": {},
            "result": {},
            "error": {"type": "object"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Clarion", "version": "0.1.0", "description": "Text classification that says why."},
        "paths": {
            "/ping": {"get": {"summary": "health", "responses": {"200": {"description": "model loaded"}}}},
            "/invocations": {
                "post": {
                    "summary": "classify, and explain when asked",
                    "requestBody": _body(),
                    "responses": {
                        "200": {"description": "one result, or a list for a list"},
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
                "get": {"summary": "a job", "responses": {"200": _JOB, "404": _error("unknown id")}},
                "delete": {
                    "summary": "cancel a job",
                    "responses": {"200": _JOB, "404": _error("unknown id")},
                },
            },
        },
        "components": {"schemas": components},
    }
