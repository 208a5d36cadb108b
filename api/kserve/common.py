"""What V1 and V2 share: a model's readiness, their texts and options read as /invocations reads
them (the same schema, messages and limits), and the data plane's results for them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import Response, jsonify

from api.codecs import Invocation, decode_payload
from api.context import data_plane
from api.kserve import EXPLANATION_FIELDS
from api.routes import request_ticket
from shared.errors import InvalidRequest
from shared.io.schemas import InvocationParameters


def readiness(name: str, version: str | None = None) -> tuple[Response, int]:
    """V1's and V2's model readiness: `{"name", "ready"}`, 503 while loading (its name is not known
    before it loads, so any name is "not ready"), a 404 for another name or version once it is."""
    if not data_plane().ready:
        return jsonify({"name": name, "ready": False}), 503
    return jsonify({"name": data_plane().model(name, version).model_id, "ready": True}), 200


def invocation(texts: Sequence[Any], options: dict[str, Any]) -> Invocation:
    """The texts and options as /invocations reads a Hugging Face body (texts in "inputs", options in
    "parameters"): the same schema, messages and limits. Jobs are /explanations' business: the
    protocols answer within the request."""
    if "async" in options:
        raise InvalidRequest(
            "parameters.async: the KServe protocols answer in the request; submit jobs to POST /explanations"
        )
    return decode_payload({"inputs": list(texts), "parameters": options}, data_plane().settings)


def results(texts: Sequence[str], parameters: InvocationParameters) -> list[dict[str, Any]]:
    """Each text's /invocations result, within this request's deadline."""
    return data_plane().results(texts, parameters, request_ticket())


def prediction_part(result: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in result.items() if name not in EXPLANATION_FIELDS}


def explanation_part(result: dict[str, Any]) -> dict[str, Any]:
    return {name: result[name] for name in EXPLANATION_FIELDS if name in result}
