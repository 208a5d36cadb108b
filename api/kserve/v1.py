"""KServe's V1 protocol: model readiness, :predict and :explain over the /invocations use case.

A body is `{"instances": [...], ...options}`: each instance a text, an object `{"text": ...}` (as a
tabular client sends a row) or a text pair `{"text", "text_pair"}`; the options are /invocations'
own, beside `instances`: zero-shot's `candidate_labels` (with `hypothesis_template`, `multi_label`)
score every instance against the same labels, as /invocations' `data` list."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.codecs import Invocation, json_body
from api.context import data_plane
from api.kserve import V1_PREFIX
from api.kserve import document as doc
from api.kserve.common import (
    explanation_part,
    invocation,
    prediction_part,
    readiness,
    results,
)
from api.operations import documented
from shared.errors import InvalidRequest
from shared.io.inputs import Input, TextPair
from shared.io.schemas import PAIR_SHAPE, ZERO_SHOT_OPTIONS, is_pair

bp = Blueprint("kserve_v1", __name__, url_prefix=V1_PREFIX + "models")
_EXAMPLE = '{"instances": ["a text"]}'


@bp.get("")
@documented(get=doc.v1_models)
def models() -> Any:
    return jsonify({"models": [data_plane().service.model.model_id]})


# The model's name is its id, which may hold slashes and colons (a hub id, an s3:// URL): see
# api/kserve/__init__.py's converters; `//` kept.
@bp.get("/<v1_model:name>", merge_slashes=False)
@documented(get=doc.v1_model_ready, parameters=doc.MODEL)
def model_ready(name: str) -> tuple[Response, int]:
    return readiness(name)


@bp.post("/<v1_model:name>:predict", merge_slashes=False)
@documented(post=doc.v1_predict, parameters=doc.MODEL)
def predict(name: str) -> Any:
    """Each instance's /invocations result (with its explanation when the body says explain: true)."""
    data_plane().model(name)
    asked = _decode(explain=False)
    return jsonify({"predictions": results(asked.texts, asked.parameters)})


@bp.post("/<v1_model:name>:explain", merge_slashes=False)
@documented(post=doc.v1_explain, parameters=doc.MODEL)
def explain(name: str) -> Any:
    """Each instance's prediction, and beside it its explanation (the /invocations result's
    explanation fields)."""
    data_plane().model(name)
    asked = _decode(explain=True)
    found = results(asked.texts, asked.parameters)
    return jsonify(
        {
            "predictions": [prediction_part(result) for result in found],
            "explanations": [explanation_part(result) for result in found],
        }
    )


def _decode(explain: bool) -> Invocation:
    body = json_body(request, _EXAMPLE)
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body must be a JSON object such as {_EXAMPLE}")
    options = dict(body)
    if "instances" not in options:
        raise InvalidRequest('missing field "instances": the list of texts (or {"text": ...} objects)')
    texts = _texts(options.pop("instances"))
    if explain and options.setdefault("explain", True) is not True:
        raise InvalidRequest("explain: :explain always explains; leave it out (or use :predict)")
    try:
        return invocation(texts, options)
    except InvalidRequest as exc:  # the Hugging Face body's names, as this body calls them
        raise InvalidRequest(_v1_names(exc.message)) from None


def _texts(instances: Any) -> list[Input]:
    if not isinstance(instances, list):
        raise InvalidRequest('instances: must be a list of texts (or of {"text": ...} objects)')
    texts = []
    for i, instance in enumerate(instances):
        if is_pair(instance) and isinstance(instance, dict):  # {"text", "text_pair"}, as the pipeline takes
            texts.append(_pair(instance, i))
            continue
        if isinstance(instance, dict) and set(instance) == {"text"}:
            instance = instance["text"]
        if isinstance(instance, dict) and set(instance) & set(ZERO_SHOT_OPTIONS):
            raise InvalidRequest(
                f"instances.{i}: zero-shot options go beside instances, for every instance: "
                '{"instances": [...], "candidate_labels": [...]} (and hypothesis_template, multi_label)'
            )
        if not isinstance(instance, str):
            raise InvalidRequest(f'instances.{i}: an instance is a text, or an object {{"text": <text>}}')
        texts.append(instance)
    return texts


def _pair(instance: dict[str, Any], i: int) -> TextPair:
    if set(instance) != {"text", "text_pair"} or not all(isinstance(v, str) for v in instance.values()):
        raise InvalidRequest(f"instances.{i}: {PAIR_SHAPE}")
    return TextPair(instance["text"], instance["text_pair"])


def _v1_names(message: str) -> str:
    """`inputs: text 0 is empty; parameters.seed: ...` as `instances: text 0 is empty; seed: ...`."""
    message = re.sub(r"(^|; )inputs\b", r"\1instances", message)
    return re.sub(r"(^|; )parameters\.", r"\1", message)
