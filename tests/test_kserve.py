"""KServe's V1 and V2 protocols over a real socket, spoken by clients nobody here wrote: the kserve SDK's
REST client (V1 and V2) and tritonclient's HTTP client (V2, with its binary defaults), each checked
against /invocations' own numbers; bad inputs, each a 4xx in the protocols' error shape; and
readiness while the model loads."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from tritonclient.utils import InferenceServerException

from api.kserve import EXPLANATION_FIELDS
from tests.support import Service, running_service, wait_healthy, wait_until

KEY = "kserve-test-key-0123456789"


def auth() -> dict[str, str]:
    """The key's header, a new dict each time: tritonclient and the kserve client add their binary
    extension's header to the dict they are given."""
    return {"Authorization": f"Bearer {KEY}"}


TEXTS = ["i loved this film , the acting was superb .", "a boring , awful plot"]
OPTIONS = {"max_evals": 10, "seed": 3, "granularity": "word"}
MAX_TEXTS = 4


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "SERVERLESS": "true",
        "API_KEYS": KEY,
        "MAX_TEXTS_PER_REQUEST": str(MAX_TEXTS),
        "MAX_TEXT_CHARS": "500",
        "MAX_EVALS_LIMIT": "50",
        "MAX_REQUEST_BYTES": "20000",
        "EXPLANATION_CACHE_SIZE": "0",  # every answer computed, none read back from a cache
        "EXACT_BACKEND": "torch",  # no switch to onnxruntime mid-module: the same numbers throughout
    }
    with running_service(tmp_path_factory.mktemp("kserve"), env) as svc:
        wait_healthy(svc)
        yield svc


@pytest.fixture(scope="module")
def model_name(service: Service) -> str:
    return service.get("/ping").json()["model"]


@pytest.fixture(scope="module")
def labels(service: Service) -> list[str]:
    return service.get("/ping").json()["labels"]


@pytest.fixture(scope="module")
def triton(service: Service) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(url=service.url.removeprefix("http://"))
    yield client
    client.close()


def invocations(service: Service, texts: list[str], **options: Any) -> list[dict[str, Any]]:
    response = service.post("/invocations", json={"data": texts, **options}, headers=auth())
    assert response.status_code == 200, response.text
    return response.json()


def scores_of(results: list[dict[str, Any]], labels: list[str]) -> np.ndarray:
    """/invocations' scores, a row per text in the model's label order, as FP32."""
    rows = [{item["label"]: item["score"] for item in result["prediction"]} for result in results]
    return np.array([[row[label] for label in labels] for row in rows], dtype=np.float32)


def explanation_of(result: dict[str, Any]) -> dict[str, Any]:
    return {name: result[name] for name in EXPLANATION_FIELDS if name in result}


def text_input(texts: list[str], binary: bool = True) -> triton_http.InferInput:
    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=binary)
    return tensor


# ---- tritonclient (V2) ---------------------------------------------------------------------------


def test_triton_health_needs_no_key_and_metadata_names_the_outputs(
    triton: triton_http.InferenceServerClient, model_name: str, labels: list[str]
) -> None:
    # Probes send no key.
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(model_name)
    assert not triton.is_model_ready("another-model")
    server = triton.get_server_metadata(headers=auth())
    assert server["name"] == "clarion" and "binary_tensor_data" in server["extensions"]
    metadata = triton.get_model_metadata(model_name, headers=auth())
    assert metadata["name"] == model_name
    assert metadata["inputs"] == [  # a BERT tokenizer has a pair template: text pairs are taken
        {"name": "text", "datatype": "BYTES", "shape": [-1]},
        {"name": "text_pair", "datatype": "BYTES", "shape": [-1], "optional": True},
    ]
    assert metadata["outputs"] == [
        {"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "attributions", "datatype": "BYTES", "shape": [-1]},
    ]
    assert json.loads(metadata["parameters"]["labels"]) == labels
    with pytest.raises(InferenceServerException) as refused:
        triton.get_model_metadata(model_name)  # metadata is no probe: it needs the key
    assert refused.value.status() == "401" and "API key" in refused.value.message()


def test_triton_infer_with_its_binary_defaults_gives_invocations_scores(
    service: Service, triton: triton_http.InferenceServerClient, model_name: str, labels: list[str]
) -> None:
    result = triton.infer(model_name, [text_input(TEXTS)], request_id="triton-1", headers=auth())
    response = result.get_response()
    assert response["id"] == "triton-1" and response["model_name"] == model_name
    # No outputs named: the default ones, all as binary data (tritonclient asks binary_data_output).
    assert [output["name"] for output in response["outputs"]] == ["scores", "label"]
    assert all("binary_data_size" in output["parameters"] for output in response["outputs"])
    scores = result.as_numpy("scores")
    assert scores.dtype == np.float32 and scores.shape == (len(TEXTS), len(labels))
    expected = invocations(service, TEXTS)
    np.testing.assert_array_equal(scores, scores_of(expected, labels))
    assert [label.decode() for label in result.as_numpy("label")] == [
        r["prediction"][0]["label"] for r in expected
    ]


def test_the_served_version_answers_as_the_model_and_another_is_a_404_naming_it(
    service: Service, triton: triton_http.InferenceServerClient, model_name: str, labels: list[str]
) -> None:
    """tritonclient's version argument: metadata, readiness and infer under /versions/<v> answer as
    the unversioned paths for the version the metadata lists; another version is a 404 in the
    protocol's error shape naming the one served. The platform is /ping's exact backend."""
    metadata = triton.get_model_metadata(model_name, headers=auth())
    (version,) = metadata["versions"]
    assert metadata["platform"] == service.get("/ping").json()["exact_backend"] == "torch"
    assert triton.get_model_metadata(model_name, model_version=version, headers=auth()) == metadata
    assert triton.is_model_ready(model_name, version) and not triton.is_model_ready(model_name, "v0")
    result = triton.infer(model_name, [text_input(TEXTS)], model_version=version, headers=auth())
    assert result.get_response()["model_name"] == model_name
    np.testing.assert_array_equal(result.as_numpy("scores"), scores_of(invocations(service, TEXTS), labels))
    base = f"/v2/models/{model_name}/versions/v0"
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["fine"]}]}
    for response in (
        service.get(base, headers=auth()),
        service.get(base + "/ready"),
        service.post(base + "/infer", json=body, headers=auth()),
    ):
        assert response.status_code == 404, response.text
        assert set(response.json()) == {"error"}
        assert "'v0'" in response.json()["error"] and version in response.json()["error"]


def test_triton_infer_in_plain_json_answers_the_outputs_asked_in_their_order(
    service: Service, triton: triton_http.InferenceServerClient, model_name: str, labels: list[str]
) -> None:
    outputs = [
        triton_http.InferRequestedOutput("label", binary_data=False),
        triton_http.InferRequestedOutput("scores", binary_data=False),
    ]
    result = triton.infer(model_name, [text_input(TEXTS, binary=False)], outputs=outputs, headers=auth())
    response = result.get_response()
    assert [output["name"] for output in response["outputs"]] == ["label", "scores"]
    assert all("data" in output and "parameters" not in output for output in response["outputs"])
    assert response["outputs"][1]["shape"] == [len(TEXTS), len(labels)]
    np.testing.assert_array_equal(result.as_numpy("scores"), scores_of(invocations(service, TEXTS), labels))
    # One binary, one JSON: each output in the form it asked for.
    mixed = [
        triton_http.InferRequestedOutput("scores", binary_data=True),
        triton_http.InferRequestedOutput("label", binary_data=False),
    ]
    response = triton.infer(model_name, [text_input(TEXTS)], outputs=mixed, headers=auth()).get_response()
    assert "binary_data_size" in response["outputs"][0]["parameters"] and "data" in response["outputs"][1]


def test_triton_explain_parameter_adds_the_attributions_of_invocations(
    service: Service, triton: triton_http.InferenceServerClient, model_name: str
) -> None:
    result = triton.infer(
        model_name, [text_input(TEXTS)], parameters={"explain": True, **OPTIONS}, headers=auth()
    )
    assert [output["name"] for output in result.get_response()["outputs"]] == [
        "scores",
        "label",
        "attributions",
    ]
    documents = [json.loads(document) for document in result.as_numpy("attributions")]
    expected = invocations(service, TEXTS, explain=True, **OPTIONS)
    assert documents == [explanation_of(r) for r in expected]
    assert documents[0]["explanation_parameters"]["granularity"] == "word"
    # Naming the attributions output explains too, and answers only it.
    only = triton.infer(
        model_name,
        [text_input(TEXTS[:1])],
        outputs=[triton_http.InferRequestedOutput("attributions")],
        parameters=OPTIONS,
        headers=auth(),
    )
    assert [output["name"] for output in only.get_response()["outputs"]] == ["attributions"]
    alone = invocations(service, TEXTS[:1], explain=True, **OPTIONS)[0]  # a batch of one, as sent
    assert json.loads(only.as_numpy("attributions")[0]) == explanation_of(alone)


def test_v2_explain_answers_infers_outputs_with_the_attributions_by_default(
    service: Service, model_name: str
) -> None:
    """/v2/models/<name>/explain is infer that always answers the attributions: the same outputs as
    infer with parameters.explain, on the model's path and on its version's."""
    sent = _v2(data=TEXTS, parameters=OPTIONS)["json"]
    asked = _v2(data=TEXTS, parameters={"explain": True, **OPTIONS})["json"]
    inferred = service.post(f"/v2/models/{model_name}/infer", json=asked, headers=auth())
    assert inferred.status_code == 200, inferred.text
    (version,) = service.get(f"/v2/models/{model_name}", headers=auth()).json()["versions"]
    for path in (f"/v2/models/{model_name}/explain", f"/v2/models/{model_name}/versions/{version}/explain"):
        explained = service.post(path, json=sent, headers=auth())
        assert explained.status_code == 200, explained.text
        assert [o["name"] for o in explained.json()["outputs"]] == ["scores", "label", "attributions"]
        assert explained.json()["outputs"] == inferred.json()["outputs"]
    # The outputs named are answered, in their order, the attributions among them.
    only = service.post(
        f"/v2/models/{model_name}/explain",
        json={**sent, "outputs": [{"name": "attributions"}, {"name": "label"}]},
        headers=auth(),
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["attributions", "label"]
    assert only.json()["outputs"][0] == inferred.json()["outputs"][2]


def _reshaped(tensor: triton_http.InferInput, shape: list[int]) -> triton_http.InferInput:
    tensor.set_shape(shape)
    return tensor


def _int_input() -> triton_http.InferInput:
    tensor = triton_http.InferInput("text", [2], "INT32")
    tensor.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    return tensor


def _named(name: str) -> triton_http.InferInput:
    tensor = triton_http.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array(["good film"], dtype=np.object_))
    return tensor


@pytest.mark.parametrize(
    ("model", "inputs", "call", "status", "message"),
    [
        ("another-model", lambda: [text_input(TEXTS)], {}, "404", "not served here"),
        (None, lambda: [_named("sentence")], {}, "400", "inputs.0.name: Input should be 'text'"),
        (None, lambda: [_int_input()], {}, "400", "inputs.0.datatype: Input should be 'BYTES'"),
        (None, lambda: [_reshaped(text_input(TEXTS), [3])], {}, "400", "shape [3] does not match"),
        (None, lambda: [text_input(["   "])], {}, "400", "text 0 is empty"),
        (None, lambda: [text_input(["a"] * (MAX_TEXTS + 1))], {}, "400", f"at most {MAX_TEXTS} texts"),
        (None, lambda: [text_input(TEXTS)], {"parameters": {"max_evalz": 3}}, "400", "parameters.max_evalz"),
        (
            None,
            lambda: [text_input(TEXTS)],
            {"parameters": {"max_evals": 51}},
            "400",
            "max_evals must be <= 50",
        ),
        (None, lambda: [text_input(TEXTS)], {"parameters": {"labels": ["nope"]}}, "400", "nope"),
        (
            None,
            lambda: [text_input(TEXTS)],
            {"outputs": [triton_http.InferRequestedOutput("logits")]},
            "400",
            "outputs.0.name",
        ),
    ],
)
def test_triton_errors_raise_with_the_message(
    triton: triton_http.InferenceServerClient,
    model_name: str,
    model: str | None,
    inputs: Any,
    call: dict[str, Any],
    status: str,
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as refused:
        triton.infer(model or model_name, inputs(), headers=auth(), **call)
    assert refused.value.status() == status
    assert message in refused.value.message()


# ---- the kserve SDK's REST client (V1 and V2) ------------------------------------------------------


def test_kserve_v1_predict_and_explain_give_invocations_results(service: Service, model_name: str) -> None:
    async def talk() -> tuple[bool, dict[str, Any], dict[str, Any]]:
        async with InferenceRESTClient(RESTConfig(protocol="v1")) as client:
            ready = await client.is_model_ready(service.url, model_name)  # no key: a probe
            body = {"instances": [TEXTS[0], {"text": TEXTS[1]}]}
            predicted = await client.infer(service.url, body, model_name=model_name, headers=auth())
            explained = await client.explain(
                service.url, model_name, {"instances": TEXTS, **OPTIONS}, headers=auth()
            )
            return ready, predicted, explained

    ready, predicted, explained = asyncio.run(talk())
    assert ready is True
    assert predicted == {"predictions": invocations(service, TEXTS)}
    expected = invocations(service, TEXTS, explain=True, **OPTIONS)
    assert explained["explanations"] == [explanation_of(r) for r in expected]
    assert explained["predictions"] == [
        {name: value for name, value in r.items() if name not in EXPLANATION_FIELDS} for r in expected
    ]


def test_kserve_v2_infer_in_json_and_in_binary(service: Service, model_name: str, labels: list[str]) -> None:
    plain = InferInput("text", [len(TEXTS)], "BYTES", data=list(TEXTS))
    binary = InferInput("text", [len(TEXTS)], "BYTES")
    binary.set_data_from_numpy(np.array(TEXTS, dtype=np.object_), binary_data=True)

    async def talk() -> list[Any]:
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as client:
            answers = []
            for tensor, parameters in (
                (plain, {"explain": True, **OPTIONS}),
                (binary, {"binary_data_output": True}),
            ):
                request = InferRequest(model_name, [tensor], request_id="kserve-1", parameters=parameters)
                answers.append(
                    await client.infer(service.url, request, model_name=model_name, headers=auth())
                )
            return answers

    explained, binary_answer = asyncio.run(talk())
    assert explained.id == binary_answer.id == "kserve-1"
    assert [o.name for o in explained.outputs] == ["scores", "label", "attributions"]
    expected = invocations(service, TEXTS, explain=True, **OPTIONS)
    for answer in (explained, binary_answer):
        scores = answer.get_output_by_name("scores").as_numpy()
        np.testing.assert_array_equal(scores.astype(np.float32), scores_of(expected, labels))
    documents = [json.loads(d) for d in explained.get_output_by_name("attributions").as_numpy()]
    assert documents == [explanation_of(r) for r in expected]


def test_kserve_client_errors_carry_the_message(service: Service, model_name: str) -> None:
    async def refused() -> httpx.HTTPStatusError:
        async with InferenceRESTClient(RESTConfig(protocol="v1")) as client:
            with pytest.raises(httpx.HTTPStatusError) as caught:
                await client.infer(service.url, {"instances": []}, model_name=model_name, headers=auth())
            return caught.value

    error = asyncio.run(refused())
    assert error.response.status_code == 400
    assert "instances: must contain at least one text" in str(error)


# ---- bad inputs, in the protocols' error shape -------------------------------------------------------


def _binary(header: dict[str, Any], data: bytes, length: int | None = None) -> dict[str, Any]:
    """A body with the binary tensor data extension: the JSON header, then `data`."""
    head = json.dumps(header).encode()
    size = str(len(head) if length is None else length)
    return {"data": head + data, "headers": {"Inference-Header-Content-Length": size}}


def _framed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _v2(data: Any = None, shape: list[int] | None = None, **fields: Any) -> dict[str, Any]:
    data = ["good film"] if data is None else data
    tensor = {
        "name": "text",
        "shape": [len(data)] if shape is None else shape,
        "datatype": "BYTES",
        "data": data,
    }
    return {"json": {"inputs": [tensor], **fields}}


def _binary_input(size: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}
        ]
    }


def _pair_input(data: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "name": "text_pair",
        "shape": [len(data)] if shape is None else shape,
        "datatype": "BYTES",
        "data": data,
    }


V1 = "/v1/models/{model}:predict"
V1_EXPLAIN = "/v1/models/{model}:explain"
V2 = "/v2/models/{model}/infer"
V2_EXPLAIN = "/v2/models/{model}/explain"
BAD_INPUTS = [
    # (path, request, status, a part of the message)
    (V1, {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
    (V1, {"data": b"", "headers": {"Content-Type": "application/json"}}, 400, "the body is empty"),
    (V1, {"data": b"good film", "headers": {"Content-Type": "text/plain"}}, 415, "content type 'text/plain'"),
    (V1, {"json": ["good film"]}, 400, "must be a JSON object"),
    (V1, {"json": {"data": ["good film"]}}, 400, 'missing field "instances"'),
    (V1, {"json": {"instances": "good film"}}, 400, "instances: must be a list"),
    (V1, {"json": {"instances": []}}, 400, "instances: must contain at least one text"),
    (V1, {"json": {"instances": ["good film", " \n"]}}, 400, "instances: text 1 is empty"),
    (V1, {"json": {"instances": [5]}}, 400, "instances.0: an instance is a text"),
    (V1, {"json": {"instances": [{"txt": "good film"}]}}, 400, "instances.0"),
    (V1, {"json": {"instances": ["a"] * (MAX_TEXTS + 1)}}, 400, f"at most {MAX_TEXTS} texts"),
    (V1, {"json": {"instances": ["a" * 501]}}, 400, "the limit is 500"),
    (V1, {"json": {"instances": ["a"], "max_evalz": 5}}, 400, "max_evalz: Extra inputs"),
    (V1, {"json": {"instances": ["a"], "explain": "yes"}}, 400, "explain: Input should be a valid boolean"),
    (V1, {"json": {"instances": ["a"], "async": True}}, 400, "async: the KServe protocols"),
    (V1, {"json": {"instances": ["a"], "explain": True, "labels": ["nope"]}}, 400, "nope"),
    (V1_EXPLAIN, {"json": {"instances": ["a"], "explain": False}}, 400, ":explain always explains"),
    (V1_EXPLAIN, {"json": {"instances": ["a"], "max_evals": 51}}, 400, "max_evals must be <= 50"),
    (V2, {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
    (V2, {"data": b"good film", "headers": {"Content-Type": "text/csv"}}, 415, "content type 'text/csv'"),
    (V2, {"json": {"inputs": []}}, 400, "inputs: List should have at least 1 item"),
    (V2, {"json": {"inputs": [_v2()["json"]["inputs"][0]] * 2}}, 400, "inputs: one input 'text'"),
    (V2, {"json": {"inputs": [_pair_input(["a"])]}}, 400, "inputs: one input 'text'"),
    (V2, {"json": {"inputs": _v2()["json"]["inputs"] + [_pair_input(["a"])] * 2}}, 400, "at most 2 items"),
    (V2, {"json": {"inputs": _v2()["json"]["inputs"] + [_pair_input(["a", "b"])]}}, 400, "holds 2 texts and"),
    (V2, {"json": {"inputs": _v2()["json"]["inputs"] + [_pair_input(["a"], shape=[2])]}}, 400, "shape [2]"),
    (V2, {"json": {"inputs": _v2()["json"]["inputs"] + [_pair_input([" "])]}}, 400, "text 0 is empty"),
    (V2, {"json": {"inputs": _v2()["json"]["inputs"] + [_pair_input([3])]}}, 400, "inputs.1.data.0"),
    (
        V2,
        {"json": {"inputs": _v2()["json"]["inputs"] + [{**_pair_input(["a"]), "datatype": "FP32"}]}},
        400,
        "inputs.1.datatype",
    ),
    (
        V2,
        {
            "json": {
                "inputs": _v2()["json"]["inputs"] + [_pair_input(["a"])],
                "parameters": {"explain": True, "precision": "amortized"},
            }
        },
        400,
        "amortized",
    ),
    (
        V2,
        _binary(
            {"inputs": [*_binary_input(13)["inputs"], _pair_input(["a"])]}, _framed(b"good film") + b"xy"
        ),
        400,
        "binary_data_size add up to 13, but 15 bytes",
    ),
    (
        V2,
        {"json": {"inputs": [{"name": "sentence", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}},
        400,
        "'text'",
    ),
    (
        V2,
        {"json": {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}},
        400,
        "'BYTES'",
    ),
    (V2, {"json": {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}}, 400, "has no data"),
    (V2, _v2(shape=[2]), 400, "shape [2] does not match its data"),
    (V2, _v2(shape=[1, 1]), 400, "shape [1, 1] does not match"),
    (V2, _v2(data=[1]), 400, "inputs.0.data.0: Input should be a valid string"),
    (V2, _v2(data=[["good film"]], shape=[1]), 400, "inputs.0.data.0"),
    (V2, _v2(data=[]), 400, "inputs: must contain at least one text"),
    (V2, _v2(data=["\t"]), 400, "inputs: text 0 is empty"),
    (V2, _v2(data=["a"] * (MAX_TEXTS + 1)), 400, f"at most {MAX_TEXTS} texts"),
    (V2, _v2(parameters={"max_evalz": 3}), 400, "parameters.max_evalz: Extra inputs"),
    (V2, _v2(parameters={"async": True}), 400, "parameters.async"),
    (V2, _v2(parameters={"explain": 1}), 400, "parameters.explain"),
    (V2, _v2(parameters={"binary_data_output": "yes"}), 400, "binary_data_output"),
    (V2, _v2(parameters=None), 400, "parameters: Input should be a valid dictionary"),
    (V2, _v2(id=None), 400, "id: Input should be a valid string"),
    (V2, _v2(outputs=[{"name": "logits"}]), 400, "outputs.0.name"),
    (V2, _v2(outputs=[{"name": "scores", "parameters": {"binary_data": "yes"}}]), 400, "binary_data"),
    (V2, _v2(priority=1), 400, "priority: Extra inputs"),
    (V2, {"json": _binary_input(13)}, 400, "needs the Inference-Header-Content-Length header"),
    (V2, _binary(_binary_input(20), _framed(b"good film")), 400, "binary_data_size is 20, but 13 bytes"),
    (V2, _binary(_binary_input(13), _framed(b"good film"), length=10**6), 400, "the body has only"),
    (V2, _binary(_binary_input(13), _framed(b"good film"), length="ten"), 400, "must be the JSON header"),
    (V2, _binary(_binary_input(6), b"\x09\x00\x00\x00ab"), 400, "element 0 claims 9 bytes"),
    (V2, _binary(_binary_input(2), b"\x09\x00"), 400, "inside element 0's 4-byte length"),
    (V2, _binary(_binary_input(6), _framed(b"\xff\xfe")), 400, "element 0 is not UTF-8"),
    (V2, _binary(_v2()["json"], b"extra"), 400, "5 bytes follow the JSON header"),
    (V2, {"json": {"inputs": [{**_binary_input(13)["inputs"][0], "data": ["a"]}]}}, 400, "Inference-Header"),
    (V2, {"json": {"x": "y" * 30000}}, 413, "MAX_REQUEST_BYTES"),
    (V2, {"data": b"\x1f\x8b", "headers": {"Content-Encoding": "gzip"}}, 415, "Content-Encoding 'gzip'"),
    (V2_EXPLAIN, _v2(parameters={"explain": False}), 400, "explain always answers the attributions"),
    (V2_EXPLAIN, _v2(outputs=[{"name": "scores"}]), 400, "name attributions among the outputs"),
    (V2_EXPLAIN, _v2(data=[]), 400, "inputs: must contain at least one text"),
    ("/v2/models/another-model/infer", _v2(), 404, "'another-model' is not served here"),
    ("/v2/models/another-model/explain", _v2(), 404, "'another-model' is not served here"),
    ("/v1/models/another-model:explain", {"json": {"instances": ["a"]}}, 404, "not served here"),
    ("/v2/repository/index", {"json": {}}, 404, "not found"),
]


@pytest.mark.parametrize(("path", "sent", "status", "message"), BAD_INPUTS)
def test_bad_inputs_are_4xx_in_the_protocols_error_shape(
    service: Service, model_name: str, path: str, sent: dict[str, Any], status: int, message: str
) -> None:
    headers = {**auth(), **sent.get("headers", {})}
    response = service.post(path.format(model=model_name), **{**sent, "headers": headers})
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert message in body["error"], body


def test_a_key_is_needed_to_infer_and_the_error_is_the_protocols(service: Service, model_name: str) -> None:
    for path, sent in ((V2, _v2()), (V1, {"json": {"instances": ["a"]}})):
        response = service.post(path.format(model=model_name), **sent)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "API key" in response.json()["error"]
    assert service.get("/v1/models").status_code == 401
    assert service.get("/v1/models", headers=auth()).json() == {"models": [model_name]}
    assert service.get(f"/v1/models/{model_name}").json() == {"name": model_name, "ready": True}
    # A model's name may hold slashes, but never ends in an operation: a GET of .../infer is that
    # operation's wrong method, as the document says, not the metadata of a model "<name>/infer".
    wrong = service.get(f"/v2/models/{model_name}/infer", headers=auth())
    assert wrong.status_code == 405, wrong.headers
    assert {m.strip() for m in wrong.headers["Allow"].split(",")} == {"OPTIONS", "POST"}  # in any order
    assert wrong.json() == {"error": "The method is not allowed for the requested URL."}
    other = service.get(f"/v2/models/{model_name}/other", headers=auth())
    assert other.status_code == 404 and "not served here" in other.json()["error"]
    assert service.post("/v2/health/live", headers=auth()).json() == {
        "error": "The method is not allowed for the requested URL."
    }


# ---- while the model loads ---------------------------------------------------------------------------


def test_readiness_is_false_while_the_model_loads(tiny_model_dir: Path) -> None:
    """In-process (Flask's test client): the loader waits until the test lets it go, and names the
    model as an S3 one is named, slashes and all."""
    from api.app import create_app
    from shared.runtime.loading import load_text_model
    from shared.serving.service import ClarionService
    from shared.settings import Settings

    name = "s3://bucket/models/tiny"
    release = threading.Event()

    def loader(settings: Settings, threads: int | None) -> Any:
        release.wait(60)
        model = load_text_model(settings, threads)
        model.model_id = name
        return model

    settings = Settings(
        model_dir=str(tiny_model_dir), serverless=True, torch_threads=1, exact_backend="torch"
    )
    service = ClarionService(settings, loader=loader)
    client = create_app(settings, service).test_client()
    try:
        assert client.get("/v2/health/live").get_json() == {"live": True}
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.get_json() == {"ready": False}
        for path in ("/v2/models/any/ready", "/v1/models/any"):
            response = client.get(path)
            assert response.status_code == 503 and response.get_json() == {"name": "any", "ready": False}
        loading = client.post("/v2/models/any/infer", json=_v2()["json"])
        assert loading.status_code == 503 and loading.get_json() == {"error": "model is loading"}
        assert loading.headers["Retry-After"] == "5"
        release.set()
        wait_until(lambda: service.ready, 60, what="the model to load")
        assert client.get(f"/v2/models/{name}/ready").status_code == 200
        assert client.get(f"/v1/models/{name}").get_json() == {"name": name, "ready": True}
        predicted = client.post(f"/v1/models/{name}:predict", json={"instances": ["good film"]})
        assert predicted.status_code == 200 and predicted.get_json()["predictions"][0]["model"] == name
    finally:
        release.set()
        service.stop()
