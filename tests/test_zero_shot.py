"""Zero-shot labels: an NLI model scores a text against labels chosen per request, as transformers'
zero-shot-classification pipeline does, and the explanation explains each candidate label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.errors import InvalidRequest
from shared.explanation.explainer import explain_encoded, new_game
from shared.io.inputs import ZeroShot
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import Engine
from shared.serving.classifier import classify
from tests.support import (
    assert_close_to_scale,
    assert_same_explanation,
    running_service,
    shap_partition_reference,
    start_engine,
    wait_healthy,
)

NLI = ["contradiction", "neutral", "entailment"]
TEXT = "the match went to extra time and the crowd went wild"  # with a hypothesis: within 64 tokens
CANDIDATES = ("sports", "politics", "music")


@pytest.fixture(scope="module")
def engine(tiny_nli_dir: Path) -> Engine:
    engine = start_engine(tiny_nli_dir)
    yield engine
    engine.stop()


def pipeline_scores(model_dir: Path, text: str, labels, multi_label: bool, template: str) -> dict[str, float]:
    from transformers import pipeline

    classifier = pipeline("zero-shot-classification", model=str(model_dir), tokenizer=str(model_dir))
    found = classifier(
        text, candidate_labels=list(labels), multi_label=multi_label, hypothesis_template=template
    )
    return dict(zip(found["labels"], found["scores"], strict=True))


@pytest.mark.parametrize(
    ("labels", "multi_label", "template"),
    [
        (CANDIDATES, False, "This example is {}."),
        (CANDIDATES, True, "This example is {}."),
        (("sports",), False, "The topic is {}."),  # one label: the pipeline scores it on its own
    ],
)
def test_scores_equal_the_zero_shot_pipeline(
    engine: Engine, tiny_nli_dir: Path, labels, multi_label, template
) -> None:
    (classification,) = classify(engine, [ZeroShot(TEXT, labels, template, multi_label)])
    mine = {s.label: s.score for s in classification.prediction}
    expected = pipeline_scores(tiny_nli_dir, TEXT, labels, multi_label, template)
    assert set(mine) == set(labels)
    assert max(abs(mine[k] - expected[k]) for k in labels) <= 1e-5
    if not multi_label and len(labels) > 1:
        assert sum(mine.values()) == pytest.approx(1.0)


def shap_reference(engine: Engine, encoded, game, options: ExplainOptions) -> np.ndarray:
    """SHAP's PartitionExplainer over the game's players and tree, whose model is the zero-shot
    score itself: each masked text paired with every hypothesis, scored as the pipeline scores."""
    import torch

    from shared.runtime.model import split_types

    model = engine.model

    def f(texts: np.ndarray) -> np.ndarray:
        out = []
        for ids in np.asarray(texts, dtype=np.int64):
            logits = []
            for row in encoded.rows(ids):  # one at a time: no padding to reason about
                tokens, types = split_types(row[None, :])
                with torch.inference_mode():
                    kinds = None if types is None else torch.tensor(types)
                    logits.append(
                        model.model(input_ids=torch.tensor(tokens), token_type_ids=kinds).logits.numpy()[0]
                    )
            out.append(model.document_outputs(encoded, np.stack(logits), options.output))
        return np.array(out)

    return shap_partition_reference(game, model.mask_token_id, f, options)


@pytest.mark.parametrize("multi_label", [False, True])
def test_each_candidate_is_explained_as_shaps_partition_explains_the_zero_shot_score(
    engine: Engine, multi_label: bool
) -> None:
    item = ZeroShot(TEXT, CANDIDATES, "This example is {}.", multi_label)
    options = ExplainOptions(max_evals=300, granularity="word", labels="all", seed=2)
    (encoded,) = engine.model.encode([item])
    (explanation,) = explain_encoded(engine, [encoded], options)
    assert explanation.labels == list(CANDIDATES)
    assert explanation.units[:3] == ["the", "match", "went"]  # the text's words only
    for label in CANDIDATES:
        total = explanation.base_values[label] + sum(explanation.values[label])
        assert total == pytest.approx(explanation.model_output[label], abs=1e-6)
    game = new_game(engine.model, encoded, options)
    mine = np.array([explanation.values[label] for label in explanation.labels]).T
    assert_close_to_scale(mine, shap_reference(engine, encoded, game, options), rel=1e-5)


def shap_text_masking_reference(
    model_dir: Path, item: ZeroShot, options: ExplainOptions
) -> tuple[np.ndarray, np.ndarray]:
    """shap.Explainer with SHAP's own Text masker (string output) over the text, whose model is the
    zero-shot pipeline's score of each masked text for the candidate labels (ferret's game)."""
    import shap
    from transformers import pipeline

    classifier = pipeline("zero-shot-classification", model=str(model_dir), tokenizer=str(model_dir))
    labels = list(item.candidate_labels)

    def f(texts: np.ndarray) -> np.ndarray:
        out = []
        for text in texts:
            found = classifier(
                str(text),
                candidate_labels=labels,
                multi_label=item.multi_label,
                hypothesis_template=item.hypothesis_template,
            )
            scores = dict(zip(found["labels"], found["scores"], strict=True))
            out.append([scores[label] for label in labels])
        return np.array(out)

    explainer = shap.Explainer(f, shap.maskers.Text(classifier.tokenizer), output_names=labels)
    np.random.seed(options.seed)
    result = explainer([item.text], max_evals=options.max_evals, batch_size=options.batch_size, silent=True)
    return result.values[0], result.base_values[0]


@pytest.mark.parametrize(("multi_label", "max_evals"), [(False, 60), (True, 300)])
def test_text_masking_equals_shap_explainer_on_the_zero_shot_score(
    engine: Engine, tiny_nli_dir: Path, multi_label: bool, max_evals: int
) -> None:
    """masking "text": SHAP's Text masker over the text alone, each masked text paired with every
    hypothesis again as the pipeline pairs them; a cut (60) and a whole (300) tree."""
    item = ZeroShot(TEXT, CANDIDATES, "The topic is {}.", multi_label)
    options = ExplainOptions(max_evals=max_evals, masking="text", labels="all", seed=6)
    (explanation,) = explain_encoded(engine, engine.model.encode([item]), options)
    values, base = shap_text_masking_reference(tiny_nli_dir, item, options)
    mine = np.array([explanation.values[label] for label in explanation.labels]).T
    assert explanation.labels == list(CANDIDATES) and explanation.masking == "text"
    assert explanation.units[:3] == ["[CLS]", "the", "m"]  # the text's tokens alone: "match" is m ##a ...
    assert_close_to_scale(mine, values, rel=1e-5)
    assert_close_to_scale(list(explanation.base_values.values()), base, rel=1e-5)
    assert np.abs(values).max() > 1e-3  # the values carry signal, not float noise
    for label in CANDIDATES:
        total = explanation.base_values[label] + sum(explanation.values[label])
        assert total == pytest.approx(explanation.model_output[label], abs=1e-6)


def test_a_model_without_an_entailment_label_is_a_clear_400(tiny_model_dir: Path) -> None:
    plain = start_engine(tiny_model_dir)
    try:
        with pytest.raises(InvalidRequest, match="entailment label"):
            classify(plain, [ZeroShot(TEXT, CANDIDATES)])
    finally:
        plain.stop()


def test_zero_shot_over_http(tiny_nli_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(tiny_nli_dir), "SERVERLESS": "true"}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        body = {"data": TEXT, "candidate_labels": list(CANDIDATES), "explain": True, "max_evals": 100}
        answer = service.post("/invocations", json=body)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert {p["label"] for p in result["prediction"]} == set(CANDIDATES)
        assert set(result["base_values"]) == set(CANDIDATES)
        chosen = service.post("/invocations", json={**body, "labels": ["music"]}).json()
        assert list(chosen["base_values"]) == ["music"]
        model = service.get("/ping").json()["model"]
        v1 = service.post(
            f"/v1/models/{model}:predict", json={"instances": [TEXT], "candidate_labels": ["sports"]}
        )
        assert v1.status_code == 200 and v1.json()["predictions"][0]["prediction"][0]["label"] == "sports"
        for refused in (
            {"hypothesis_template": "no slot"},
            {"candidate_labels": ["a", "a"]},
            {"candidate_labels": []},
            {"precision": "amortized"},
            {"faithfulness": True},
        ):
            bad = service.post("/invocations", json={**body, **refused})
            assert bad.status_code == 400, (refused, bad.text)
        job = service.post("/explanations", json=body)  # a job explains each candidate label too
        assert job.status_code == 200 and job.json()["status"] == "succeeded", job.text
        assert_same_explanation(job.json()["result"], result)
        assert job.json()["prediction"] == result["prediction"]
        page = service.get(f"/explanations/{job.json()['id']}", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "sports" in page.text
        by_text = service.post("/explanations", json={**body, "masking": "text"})  # SHAP's string masker
        assert by_text.status_code == 200 and by_text.json()["status"] == "succeeded", by_text.text
        answered = service.post("/invocations", json={**body, "masking": "text"}).json()
        assert answered["explanation_parameters"]["masking"] == "text"
        assert_same_explanation(by_text.json()["result"], answered)
        pair = {"text": "a", "text_pair": "b"}
        assert service.post("/invocations", json={"data": pair, "candidate_labels": ["x"]}).status_code == 400
        document = service.get("/openapi.json").json()
        assert "candidate_labels" in document["components"]["schemas"]["SeedBody"]["properties"]

        from clarion_client import Clarion  # the client speaks both: zero-shot labels and text pairs

        client = Clarion(service.url)
        scored = client.classify(TEXT, candidate_labels=list(CANDIDATES), multi_label=True)
        assert {p["label"] for p in scored["prediction"]} == set(CANDIDATES)
        explained = client.explain({"text": "a man plays", "text_pair": "music is made"}, max_evals=60)
        assert set(explained["segments"]) == {0, 1}


def test_pair_and_zero_shot_jobs_run_on_a_worker(tiny_nli_dir: Path, tmp_path: Path) -> None:
    """A real Redis and Celery worker: a job of a text pair and a text, and a zero-shot job, each
    explained by the worker as the API explains them in the request."""
    from tests.support import assert_same_prediction, job_stack, wait_until

    env = {"MODEL_DIR": str(tiny_nli_dir), "WORKER_CONCURRENCY": "1", "TORCH_THREADS": "1"}
    with job_stack(tmp_path, env) as stack:
        api = stack.api
        pair = {"text": "a man plays a guitar on stage", "text_pair": "someone is making music"}
        bodies = [
            {"data": [pair, TEXT], "max_evals": 100},
            {"data": TEXT, "candidate_labels": list(CANDIDATES), "multi_label": True, "max_evals": 100},
        ]
        for body in bodies:
            submitted = api.post("/explanations", json=body)
            assert submitted.status_code == 202, submitted.text
            job: dict = {}

            def finished(job_id: str = submitted.json()["id"], job: dict = job) -> bool:
                job.update(api.get(f"/explanations/{job_id}").json())
                return job["status"] in {"succeeded", "failed"}

            wait_until(finished, 120, what="the job to finish")
            assert job["status"] == "succeeded", job
            synchronous = api.post("/invocations", json={**body, "explain": True}).json()
            results = job["result"] if isinstance(job["result"], list) else [job["result"]]
            expected = synchronous if isinstance(synchronous, list) else [synchronous]
            for result, answer in zip(results, expected, strict=True):
                assert_same_explanation(result, answer)
                assert_same_prediction(result["prediction"], answer["prediction"])
        assert set(results[0]["base_values"]) == set(CANDIDATES)  # multi_label: each explained


def test_kserve_v1_and_v2_score_and_explain_candidate_labels(tiny_nli_dir: Path, tmp_path: Path) -> None:
    """Zero-shot over the KServe protocols, as /invocations answers it: V1's candidate_labels beside
    the instances (for every instance), V2's in its parameters, whose scores have a column per
    candidate label in their order, named by the output's parameters.labels (JSON and binary)."""
    import json

    import tritonclient.http as triton_http
    from jsonschema import Draft202012Validator

    env = {"MODEL_DIR": str(tiny_nli_dir), "SERVERLESS": "true"}
    texts = [TEXT, "the band played all night long"]
    labels = ["music", "sports", "politics"]  # not the model's order, nor alphabetical
    zero_shot = {"candidate_labels": labels, "hypothesis_template": "The topic is {}.", "multi_label": True}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        model = service.get("/ping").json()["model"]
        expected = service.post(
            "/invocations", json={"data": texts, **zero_shot, "explain": True, "max_evals": 60}
        ).json()
        want = np.array(
            [[{p["label"]: p["score"] for p in r["prediction"]}[k] for k in labels] for r in expected]
        )
        assert len({tuple(row) for row in want.round(6)}) == 2  # the texts score apart

        v1 = service.post(
            f"/v1/models/{model}:predict", json={"instances": [texts[0], {"text": texts[1]}], **zero_shot}
        )
        assert v1.status_code == 200, v1.text
        assert [r["prediction"] for r in v1.json()["predictions"]] == [r["prediction"] for r in expected]
        explained = service.post(
            f"/v1/models/{model}:explain", json={"instances": texts, **zero_shot, "max_evals": 60}
        )
        assert explained.status_code == 200, explained.text
        for explanation, answer in zip(explained.json()["explanations"], expected, strict=True):
            assert list(explanation["base_values"]) == list(answer["base_values"])
            assert_same_explanation(explanation, answer)
        per_instance = {"instances": [{"text": TEXT, "candidate_labels": labels}]}
        refused = service.post(f"/v1/models/{model}:predict", json=per_instance)
        assert refused.status_code == 400 and "beside instances" in refused.json()["error"], refused.text

        rows = {"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}
        body = {"inputs": [rows], "parameters": {**zero_shot, "explain": True, "max_evals": 60}}
        v2 = service.post(f"/v2/models/{model}/infer", json=body)
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        assert outputs["scores"]["shape"] == [2, 3]
        assert json.loads(outputs["scores"]["parameters"]["labels"]) == labels
        np.testing.assert_allclose(np.reshape(outputs["scores"]["data"], (2, 3)), want, rtol=0, atol=1e-6)
        assert outputs["label"]["data"] == [r["prediction"][0]["label"] for r in expected]
        for document, answer in zip(outputs["attributions"]["data"], expected, strict=True):
            assert_same_explanation(json.loads(document), answer)
        plain = service.post(f"/v2/models/{model}/infer", json={"inputs": [rows]}).json()["outputs"][0]
        assert plain["shape"] == [2, 3] and "parameters" not in plain  # the model's labels: its metadata's
        client = triton_http.InferenceServerClient(url=service.url.removeprefix("http://"))
        try:
            tensor = triton_http.InferInput("text", [2], "BYTES")
            tensor.set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=True)
            result = client.infer(model, [tensor], parameters=zero_shot)
            np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=0, atol=1e-6)
            assert json.loads(result.get_output("scores")["parameters"]["labels"]) == labels
        finally:
            client.close()
        for bad, words in (
            ({"candidate_labels": []}, "candidate_labels"),
            ({"candidate_labels": ["a", "a"]}, "once"),
            ({"candidate_labels": labels, "hypothesis_template": "no slot"}, "hypothesis_template"),
            ({"candidate_labels": labels, "labels": ["entailment"]}, "unknown label"),
        ):
            answer = service.post(f"/v2/models/{model}/infer", json={"inputs": [rows], "parameters": bad})
            assert answer.status_code == 400 and words in answer.json()["error"], (bad, answer.text)
        pair = {"name": "text_pair", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}
        answer = service.post(
            f"/v2/models/{model}/infer",
            json={"inputs": [rows, pair], "parameters": {"candidate_labels": labels}},
        )
        assert answer.status_code == 400 and "candidate_labels" in answer.json()["error"]
        # The OpenAPI document says the same of V2 bodies.
        components = service.get("/openapi.json").json()["components"]
        valid = Draft202012Validator(
            {"$ref": "#/components/schemas/KServeV2InferRequest", "components": components}
        ).is_valid
        assert valid({"inputs": [rows], "parameters": {"candidate_labels": labels, "multi_label": True}})
        assert not valid({"inputs": [rows, pair], "parameters": {"candidate_labels": labels}})
        assert not valid({"inputs": [rows], "parameters": {"candidate_labels": []}})
