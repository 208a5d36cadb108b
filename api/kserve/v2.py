"""KServe's V2 protocol (the Open Inference Protocol): health, server and model metadata, infer and
explain over the /invocations use case. Attributions are an output: infer answers them with
`parameters.explain`, explain by default. Each model route answers under `/versions/<v>` too, for
the version served (its metadata's `versions`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from api.context import data_plane
from api.kserve import V2_PREFIX
from api.kserve import document as doc
from api.kserve.common import (
    explanation_part,
    invocation,
    readiness,
    results,
)
from api.kserve.infer import ATTRIBUTIONS, INPUT, PAIR_INPUT, OutputTensor, decode_infer, infer_response
from api.operations import documented
from shared.dataplane import versions_of
from shared.errors import InvalidRequest
from shared.runtime.model import TextModel

bp = Blueprint("kserve_v2", __name__, url_prefix=V2_PREFIX)
SERVER = "clarion"
EXTENSIONS = ["binary_tensor_data"]
DEFAULT_OUTPUTS = ("scores", "label")  # and the attributions with parameters.explain: true


@bp.get("")
@documented(get=doc.v2_server)
def server_metadata() -> Any:
    return jsonify({"name": SERVER, "version": _version(), "extensions": EXTENSIONS})


def _version() -> str:
    try:
        return version("clarion")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@bp.get("/health/live")
@documented(get=doc.v2_live)
def live() -> Any:
    return jsonify({"live": True})


@bp.get("/health/ready")
@documented(get=doc.v2_ready)
def ready() -> tuple[Response, int]:
    is_ready = data_plane().ready
    return jsonify({"ready": is_ready}), 200 if is_ready else 503


# The model's name is its id, which may hold slashes and colons (a hub id, an s3:// URL): see
# api/kserve/__init__.py's converters; `//` kept. The versioned route is the same view.
_VERSION = "/versions/<version>"


@bp.get("/models/<v2_model:name>", merge_slashes=False)
@bp.get("/models/<v2_model:name>" + _VERSION, merge_slashes=False)
@documented(get=doc.v2_model_metadata, parameters=doc.MODEL)
def model_metadata(name: str, version: str | None = None) -> Any:
    return jsonify(metadata(data_plane().model(name, version)))


@bp.get("/models/<v2_model:name>/ready", merge_slashes=False)
@bp.get("/models/<v2_model:name>" + _VERSION + "/ready", merge_slashes=False)
@documented(get=doc.v2_model_ready, parameters=doc.MODEL)
def model_ready(name: str, version: str | None = None) -> tuple[Response, int]:
    return readiness(name, version)


@bp.post("/models/<v2_model:name>/infer", merge_slashes=False)
@bp.post("/models/<v2_model:name>" + _VERSION + "/infer", merge_slashes=False)
@documented(post=doc.v2_infer, parameters=doc.MODEL)
def infer(name: str, version: str | None = None) -> Response:
    return _infer(name, version, explain=False)


@bp.post("/models/<v2_model:name>/explain", merge_slashes=False)
@bp.post("/models/<v2_model:name>" + _VERSION + "/explain", merge_slashes=False)
@documented(post=doc.v2_explain, parameters=doc.MODEL)
def explain(name: str, version: str | None = None) -> Response:
    """infer, with the attributions among the outputs answered by default: the explainer route a
    KServe InferenceService's `explainer` serves, for a hosted model or a remote one alike."""
    return _infer(name, version, explain=True)


def _infer(name: str, version: str | None, explain: bool) -> Response:
    model = data_plane().model(name, version)
    call = decode_infer(request, data_plane().settings)
    asked = invocation(call.texts, call.options)
    candidates = asked.parameters.candidate_labels
    explained = explain or asked.parameters.explain
    answered = call.answered(DEFAULT_OUTPUTS + ((ATTRIBUTIONS,) if explained else ()))
    if explain and (call.options.get("explain", True) is not True or ATTRIBUTIONS not in answered):
        raise InvalidRequest(
            f"explain always answers the {ATTRIBUTIONS} output: leave parameters.explain out and name "
            f"{ATTRIBUTIONS} among the outputs if you name them (or use infer)"
        )
    # Explaining is what the attributions output costs: it runs when they are answered, and only then.
    parameters = asked.parameters.model_copy(update={"explain": ATTRIBUTIONS in answered})
    found = results(asked.texts, parameters)
    if candidates is None:
        tensors = output_tensors(found, model.labels, list(answered))
    else:  # zero-shot: the scores' columns are the candidate labels as sent, named on the output
        tensors = output_tensors(found, list(candidates), list(answered), name_labels=True)
    return infer_response(
        model.model_id,
        call.id or g.request_id,
        [(tensors[name], binary) for name, binary in answered.items()],
    )


def metadata(model: TextModel) -> dict[str, Any]:
    """The model's metadata. Its label names (the columns of `scores`) are a JSON array in its
    parameters: the protocol's parameters hold strings, and a JSON text keeps any label name whole.
    A model whose tokenizer has a pair template lists the optional second input `text_pair`
    (`optional` is Triton's word for an input a request may leave out). Its platform is what runs
    its exact passes now, as /ping's `exact_backend` says ("torch", or "onnxruntime" once its
    export is ready)."""
    inputs: list[dict[str, Any]] = [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}]
    if model.takes_pairs:
        inputs.append({"name": PAIR_INPUT, "datatype": "BYTES", "shape": [-1], "optional": True})
    return {
        "name": model.model_id,
        "versions": versions_of(model),
        "platform": model.exact_backend,
        "inputs": inputs,
        "outputs": [
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(model.labels)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": ATTRIBUTIONS, "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {"labels": json.dumps(model.labels, ensure_ascii=False)},
    }


def output_tensors(
    found: Sequence[dict[str, Any]], labels: Sequence[str], names: Sequence[str], name_labels: bool = False
) -> dict[str, OutputTensor]:
    """The named outputs of these /invocations results: each text's score per label in `labels`'
    order (the model's, or zero-shot's candidate labels), its top label, and its explanation as one
    JSON document. `name_labels`: the scores output names its columns in its parameters (`labels`,
    a JSON array, as the model's metadata names the model's)."""
    tensors: dict[str, OutputTensor] = {}
    if "scores" in names:
        by_label = [{item["label"]: item["score"] for item in result["prediction"]} for result in found]
        scores = [scores[label] for scores in by_label for label in labels]
        named = {"labels": json.dumps(list(labels), ensure_ascii=False)} if name_labels else {}
        tensors["scores"] = replace(
            OutputTensor.fp32("scores", [len(found), len(labels)], scores), parameters=named
        )
    if "label" in names:
        tensors["label"] = OutputTensor.strings("label", [r["prediction"][0]["label"] for r in found])
    if ATTRIBUTIONS in names:
        documents = [json.dumps(explanation_part(r), separators=(",", ":")) for r in found]
        tensors[ATTRIBUTIONS] = OutputTensor.strings(ATTRIBUTIONS, documents)
    return tensors
