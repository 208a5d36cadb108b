"""The KServe V1 and V2 operations of the OpenAPI document (api/openapi.py builds it): their JSON forms,
derived from /invocations' own schemas after this deployment's limits and label names are in, so a
request the document calls valid is accepted and one it calls invalid is refused here too. The
binary tensor data extension is not described (its bodies are bytes); the parameters that ask for
it are, and a response that uses it is documented as bytes."""

from __future__ import annotations

import copy
from typing import Any

from api.kserve import EXPLANATION_FIELDS
from api.kserve.infer import INPUT, OUTPUTS, PAIR_INPUT
from api.operations import Deployment, PathParameter
from shared.io.schemas import TEXT_JSON_SCHEMA
from shared.settings import Settings

_JSON = "application/json"
_BINARY = "application/octet-stream"
_TEXT = {k: v for k, v in TEXT_JSON_SCHEMA.items() if k != "description"}
_PREDICTION_FIELDS = ("prediction", "truncated", "model")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("ProtocolErrorBody"))


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or list(properties)}


def kserve_schemas(schemas: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The protocols' bodies, from the deployment's schemas (`_limited` already applied)."""
    result = schemas["TextResult"]["properties"]
    prediction = _object({name: result[name] for name in _PREDICTION_FIELDS})
    explanation = _object(
        {name: result[name] for name in EXPLANATION_FIELDS},
        ["explanation", "offsets", "base_values", "model_output", "explanation_parameters"],
    )
    v1_body = _v1_body(schemas["SeedBody"], settings.max_texts)
    v2_request = _v2_request(schemas["HuggingFaceBody"], settings.max_texts)
    v1_explain_body = copy.deepcopy(v1_body)
    v1_explain_body["properties"]["explain"] = {
        "const": True,
        "default": True,
        "description": ":explain explains",
    }
    return {
        "KServeV1Body": v1_body,
        "KServeV1ExplainBody": v1_explain_body,
        "KServeV1Prediction": prediction,
        "KServeV1Explanation": explanation,
        "KServeV2Parameters": _v2_parameters(schemas["InvocationParameters"]),
        "KServeV2InferRequest": v2_request,
        "KServeV2ExplainRequest": _v2_explain_request(v2_request),
        "KServeV2InferResponse": _object(
            {
                "model_name": {"type": "string"},
                "id": {"type": "string", "description": "the request's id, else its X-Request-Id"},
                "outputs": {
                    "type": "array",
                    "items": _object(
                        {
                            "name": {"enum": list(OUTPUTS)},
                            "datatype": {"enum": ["FP32", "BYTES"]},
                            "shape": {"type": "array", "items": {"type": "integer"}},
                            "data": {"type": "array", "items": {"type": ["number", "string"]}},
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "labels": {
                                        "type": "string",
                                        "description": "zero-shot scores: the candidate labels, in "
                                        "the order of its columns, as a JSON array",
                                    }
                                },
                            },
                        },
                        ["name", "datatype", "shape", "data"],
                    ),
                },
            }
        ),
        "KServeV2ModelMetadata": _object(
            {
                "name": {"type": "string"},
                "versions": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "the version served (its fingerprint): the paths under /versions/{v}",
                },
                "platform": {
                    "type": "string",
                    "description": "what runs its exact passes now: /ping's exact_backend",
                },
                "inputs": {"type": "array", "items": _ref("KServeV2TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("KServeV2TensorMetadata")},
                "parameters": _object(
                    {
                        "labels": {
                            "type": "string",
                            "description": "the label names, in the order of scores' "
                            "columns, as a JSON array",
                        }
                    }
                ),
            }
        ),
        "KServeV2TensorMetadata": _object(
            {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "optional": {
                    "type": "boolean",
                    "description": "an input a request may leave out (text_pair, for text pairs)",
                },
            },
            ["name", "datatype", "shape"],
        ),
        "KServeReady": _object({"name": {"type": "string"}, "ready": {"type": "boolean"}}),
    }


def _v1_body(seed: dict[str, Any], max_texts: int) -> dict[str, Any]:
    """SeedBody with `instances` for `data` (each a text or `{"text": ...}`), and no `async`."""
    body = copy.deepcopy(seed)
    body["title"] = "KServeV1Body"
    body["description"] = (
        '{"instances": [...], ...options}: each instance a text, {"text": <text>} or a text pair '
        '{"text": <text>, "text_pair": <text>}, at most '
        "MAX_TEXTS_PER_REQUEST; the options of /invocations beside them (no async)"
    )
    properties = body["properties"]
    del properties["data"], properties["async"]
    instance = {
        "anyOf": [
            _TEXT,
            {
                "type": "object",
                "properties": {"text": _TEXT},
                "required": ["text"],
                "additionalProperties": False,
            },
            {  # a text pair, as the pipeline takes it
                "type": "object",
                "properties": {"text": _TEXT, "text_pair": _TEXT},
                "required": ["text", "text_pair"],
                "additionalProperties": False,
            },
        ]
    }
    properties["instances"] = {"type": "array", "items": instance, "minItems": 1, "maxItems": max_texts}
    body["required"] = ["instances"]
    for shape in body["anyOf"]:  # each text's length by its long_text mode; pairs where it takes them
        data = shape["properties"].pop("data")
        limit = {"maxLength": data["maxLength"]}
        items: dict[str, Any] = {**limit, "properties": {"text": limit, "text_pair": limit}}
        if "not" in data:  # a shape without pairs
            items["not"] = {"type": "object", "required": ["text_pair"]}
        shape["properties"]["instances"] = {"items": items}
    return body


def _v2_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """InvocationParameters without `async` (the zero-shot options where the model is an NLI model:
    the scores' columns are then the candidate labels, which the scores output names), with the
    protocol's binary_data_output."""
    parameters = copy.deepcopy(options)
    parameters["title"] = "KServeV2Parameters"
    parameters["description"] = (
        "the options of /invocations (no async), and binary_data_output; with candidate_labels (an NLI "
        "model), scores has a column per candidate label, in their order, named by the scores output's "
        "parameters.labels"
    )
    properties = parameters["properties"]
    properties.pop("async", None)
    properties["explain"] = {
        **properties["explain"],
        "description": "answer the attributions output too, when `outputs` names none (naming it explains)",
    }
    properties["binary_data_output"] = {
        "type": "boolean",
        "default": False,
        "description": "every output as binary data (the binary tensor data extension) unless its own "
        "binary_data says otherwise",
    }
    return parameters


def _v2_request(hugging_face: dict[str, Any], max_texts: int) -> dict[str, Any]:
    """One BYTES input `text` of shape [n] for n texts, and for text pairs a BYTES input `text_pair`
    of the same shape beside it (in either order); the outputs to answer, and the options."""
    tensor_input = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"enum": [INPUT, PAIR_INPUT]},
            "shape": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 1},
            "datatype": {"const": "BYTES"},
            "data": {"type": "array", "items": _TEXT, "minItems": 1, "maxItems": max_texts},
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "description": "binary_data_size, with the binary tensor data extension only",
            },
        },
    }
    text, pair = ({"properties": {"name": {"const": name}}} for name in (INPUT, PAIR_INPUT))
    inputs = {
        "type": "array",
        "items": tensor_input,
        "minItems": 1,
        "maxItems": 2,
        "description": f"{INPUT!r}, and for text pairs {PAIR_INPUT!r} (each row's second text) beside it",
        "anyOf": [{"prefixItems": [text, pair]}, {"prefixItems": [pair, text], "minItems": 2}],
    }
    output = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": {"enum": list(OUTPUTS)},
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "binary_data": {"type": "boolean", "description": "this output as binary data"}
                },
            },
        },
    }
    # JSON Schema cannot say "shape [len(data)]", nor "every input's shape the same", but it can list
    # every n allowed.
    rows = [
        {
            "properties": {
                "inputs": {
                    "items": {"properties": {"shape": {"const": [n]}, "data": {"minItems": n, "maxItems": n}}}
                }
            }
        }
        for n in range(1, max_texts + 1)
    ]
    shapes = []
    for shape in copy.deepcopy(hugging_face["anyOf"]):  # each text's length by its long_text mode
        lengths = shape["properties"].pop("inputs")
        item: dict[str, Any] = {"properties": {"data": {"items": {"maxLength": lengths["maxLength"]}}}}
        if "not" in lengths:  # a shape without pairs: no text_pair input
            item["properties"]["name"] = {"const": INPUT}
        shape["properties"]["inputs"] = {"items": item}
        shapes.append(shape)
    return {
        "title": "KServeV2InferRequest",
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "description": "echoed in the response"},
            "model_name": {"type": "string", "description": "as KServe's client sends it; the path decides"},
            "model_version": {"type": "string"},
            "inputs": inputs,
            "outputs": {
                "type": "array",
                "items": output,
                "description": "the outputs to answer, in this order (default: scores and label, and "
                "attributions with explain)",
            },
            "parameters": _ref("KServeV2Parameters"),
        },
        "allOf": [{"anyOf": rows}, {"anyOf": shapes}],
    }


def _v2_explain_request(infer: dict[str, Any]) -> dict[str, Any]:
    """explain's body: infer's, whose outputs, when named, include the attributions, and whose
    `explain` parameter, when sent, is true."""
    explain = copy.deepcopy(infer)
    explain["title"] = "KServeV2ExplainRequest"
    explain["properties"]["outputs"]["description"] = (
        "the outputs to answer, in this order, the attributions among them (default: scores, label and "
        "attributions)"
    )
    explain["allOf"].append(
        {
            "properties": {
                "outputs": {"contains": {"properties": {"name": {"const": "attributions"}}}},
                "parameters": {"properties": {"explain": {"const": True}}},
            }
        }
    )
    return explain


# ---- the operations the V1 and V2 views declare (api/kserve/v1.py, v2.py) -------------------------


def _model_name(deployment: Deployment) -> dict[str, Any]:
    name = deployment.model_name
    return {
        "name": "model_name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [name]} if name else {"type": "string", "minLength": 1},
        "description": "the served model's name: `model` in /ping (another name is a 404)",
    }


def _model_version(deployment: Deployment) -> dict[str, Any]:
    version = deployment.model_version
    return {
        "name": "model_version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [version]}
        if version
        else {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
        "description": "the served model's version: its V2 metadata's `versions` (another is a 404)",
    }


def _for_the_version(operation: dict[str, Any]) -> dict[str, Any]:
    """A model route under `/versions/{model_version}`: the same operation, whose 404 is also a
    version not served."""
    return {
        **operation,
        "summary": operation["summary"] + ", for the version served",
        "responses": {
            **operation["responses"],
            "404": _error("another model's name, or a version not served"),
        },
    }


MODEL = {"name": PathParameter(_model_name), "version": PathParameter(_model_version, _for_the_version)}

_UNAUTHORIZED = {"401": _error("API_KEYS are set and the request has no valid Authorization: Bearer key")}
_LOADING = {"503": _error("the model is loading, or failed to load")}
_UNKNOWN = {"404": _error("another model's name")}
_REQUEST_ERRORS = {
    "400": _error(
        "a body this document calls invalid: malformed JSON, wrong types, names or shapes, unknown "
        "fields or options, empty or blank texts, more than MAX_TEXTS_PER_REQUEST, label names the "
        "model does not have"
    ),
    **_UNAUTHORIZED,
    **_UNKNOWN,
    "413": _error("body larger than MAX_REQUEST_BYTES"),
    "415": _error("a content type other than JSON"),
    "503": _error("the model is loading, or past the request timeout"),
}
_READINESS = {
    "200": _json("the model is ready", _ref("KServeReady")),
    **_UNKNOWN,
    "503": _json("the model is loading (or failed to load): ready false", _ref("KServeReady")),
}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {_JSON: {"schema": _ref(schema)}}}


def v1_models(_: Deployment) -> dict[str, Any]:
    names = _object({"models": {"type": "array", "items": {"type": "string"}}})
    return {
        "summary": "KServe V1: the models served (one)",
        "responses": {"200": _json("their names", names), **_UNAUTHORIZED, **_LOADING},
    }


def v1_model_ready(_: Deployment) -> dict[str, Any]:
    return {"summary": "KServe V1: the model's readiness (no API key needed)", "responses": _READINESS}


def v1_predict(_: Deployment) -> dict[str, Any]:
    predictions = {"type": "array", "items": _ref("TextResult")}
    return {
        "summary": "KServe V1: each instance's /invocations result",
        "requestBody": _body("KServeV1Body"),
        "responses": {
            "200": _json("one per instance", _object({"predictions": predictions})),
            **_REQUEST_ERRORS,
        },
    }


def v1_explain(_: Deployment) -> dict[str, Any]:
    answer = _object(
        {
            "predictions": {"type": "array", "items": _ref("KServeV1Prediction")},
            "explanations": {"type": "array", "items": _ref("KServeV1Explanation")},
        }
    )
    return {
        "summary": "KServe V1: each instance's prediction and explanation",
        "requestBody": _body("KServeV1ExplainBody"),
        "responses": {"200": _json("one of each per instance", answer), **_REQUEST_ERRORS},
    }


def v2_server(_: Deployment) -> dict[str, Any]:
    server = _object(
        {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        }
    )
    return {
        "summary": "KServe V2: the server's metadata",
        "responses": {
            "200": _json("name, version and the protocol extensions spoken", server),
            **_UNAUTHORIZED,
        },
    }


def v2_live(_: Deployment) -> dict[str, Any]:
    return {
        "summary": "KServe V2: liveness (no API key needed)",
        "responses": {"200": _json("the process answers", _object({"live": {"type": "boolean"}}))},
    }


def v2_ready(_: Deployment) -> dict[str, Any]:
    ready = _object({"ready": {"type": "boolean"}})
    return {
        "summary": "KServe V2: readiness (no API key needed)",
        "responses": {
            "200": _json("the model is ready", ready),
            "503": _json("the model is loading (or failed to load)", ready),
        },
    }


def v2_model_metadata(_: Deployment) -> dict[str, Any]:
    return {
        "summary": "KServe V2: the model's input, outputs and label names",
        "responses": {
            "200": _json("the model's metadata", _ref("KServeV2ModelMetadata")),
            **_UNAUTHORIZED,
            **_UNKNOWN,
            **_LOADING,
        },
    }


def v2_model_ready(_: Deployment) -> dict[str, Any]:
    return {"summary": "KServe V2: the model's readiness (no API key needed)", "responses": _READINESS}


def v2_infer(_: Deployment) -> dict[str, Any]:
    return _v2_infer(
        "KServe V2: scores, label and (with explain) attributions per text", "KServeV2InferRequest"
    )


def v2_explain(_: Deployment) -> dict[str, Any]:
    return _v2_infer(
        "KServe V2: infer that always answers the attributions (the scores, label and attributions, "
        "or the outputs named, attributions among them; parameters.explain false is a 400)",
        "KServeV2ExplainRequest",
    )


def _v2_infer(summary: str, request: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "requestBody": _body(request),
        "responses": {
            "200": {
                "description": "the outputs asked for: JSON, or with an output as binary data, the binary "
                "tensor data extension (a JSON header of Inference-Header-Content-Length bytes, then the "
                "outputs' bytes)",
                "content": {
                    _JSON: {"schema": _ref("KServeV2InferResponse")},
                    _BINARY: {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_REQUEST_ERRORS,
        },
    }
