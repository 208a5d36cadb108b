"""What V1 and V2 share: the served model, found by the name in the path, and the /invocations use
case (the same options, validation, limits and code path) run on their texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Response, jsonify

from api.codecs import Invocation, decode_payload
from api.context import app_parts
from api.kserve import EXPLANATION_FIELDS, versions
from api.routes import request_ticket
from shared.errors import InvalidRequest, NotFound
from shared.io.schemas import InvocationParameters
from shared.runtime.model import TextModel


def served_model(name: str, version: str | None = None) -> TextModel:
    """The model a path names, and the version it names if any: a 503 while it loads (or if it
    failed to), a 404 for another name or another version. Its name is the one /ping and job records
    give it (`model`)."""
    model = app_parts().service.model
    if name != model.model_id:
        raise NotFound(f"model {name!r} is not served here; this server serves {model.model_id!r}")
    if version is not None and version not in versions(model):
        raise NotFound(
            f"model {name!r} has no version {version!r} here; the versions served: {versions(model)}"
        )
    return model


def readiness(name: str, version: str | None = None) -> tuple[Response, int]:
    """V1's and V2's model readiness: `{"name", "ready"}`, 503 while loading (its name is not known
    before it loads, so any name is "not ready"), a 404 for another name or version once it is."""
    if not app_parts().service.ready:
        return jsonify({"name": name, "ready": False}), 503
    return jsonify({"name": served_model(name, version).model_id, "ready": True}), 200


def invocation(texts: Sequence[Any], options: dict[str, Any]) -> Invocation:
    """The texts and options as /invocations reads a Hugging Face body (texts in "inputs", options in
    "parameters"): the same schema, messages and limits. Jobs are /explanations' business: the
    protocols answer within the request."""
    if "async" in options:
        raise InvalidRequest(
            "parameters.async: the KServe protocols answer in the request; submit jobs to POST /explanations"
        )
    return decode_payload({"inputs": list(texts), "parameters": options}, app_parts().settings)


def results(texts: Sequence[str], parameters: InvocationParameters) -> list[dict[str, Any]]:
    """Each text's /invocations result, within this request's deadline."""
    return app_parts().service.results(texts, parameters, request_ticket())


def prediction_part(result: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in result.items() if name not in EXPLANATION_FIELDS}


def explanation_part(result: dict[str, Any]) -> dict[str, Any]:
    return {name: result[name] for name in EXPLANATION_FIELDS if name in result}
