"""Text pairs (NLI, cross-encoders): classified as transformers' pipeline classifies {"text",
"text_pair"} (token types, the tokenizer's pair template and truncation), explained over the words of
both texts with the tree's first split between them, and equal to SHAP's Partition values for that
tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.errors import InvalidRequest
from shared.explanation.explainer import explain_encoded, new_game
from shared.io.inputs import TextPair
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import Engine
from shared.runtime.model import TextModel
from tests.support import (
    assert_close_to_scale,
    assert_same_explanation,
    assert_same_prediction,
    run_cli,
    running_service,
    shap_partition_reference,
    start_engine,
    wait_healthy,
)

PAIRS = [
    TextPair("is it raining outside today?", "the sky is clear and blue, not a cloud anywhere."),
    TextPair("a man is playing a guitar on stage", "someone is making music"),
]
NLI = ["contradiction", "neutral", "entailment"]


@pytest.fixture(scope="module")
def nli_service(tiny_nli_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny NLI model served (single process), for the front doors' tests."""
    env = {"MODEL_DIR": str(tiny_nli_dir), "SERVERLESS": "true", "CLARIFY_NUM_SAMPLES": "60"}
    with running_service(tmp_path_factory.mktemp("nli-service"), env) as service:
        wait_healthy(service)
        yield service


def invocations_scores(service, pairs: list[TextPair], **options) -> list[dict]:
    """/invocations' answer for these pairs, as JSON: what every other front door must match."""
    data = [{"text": p.text, "text_pair": p.text_pair} for p in pairs]
    answer = service.post("/invocations", json={"data": data, **options})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def engine(tiny_nli_dir: Path) -> Engine:
    engine = start_engine(tiny_nli_dir)
    yield engine
    engine.stop()


def pipeline_scores(model_dir: Path, inputs) -> list[dict[str, float]]:
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), top_k=None)
    out = []
    for item in inputs:
        given = {"text": item.text, "text_pair": item.text_pair} if isinstance(item, TextPair) else item
        found = classifier(given, truncation=True)
        found = found[0] if isinstance(found[0], list) else found
        out.append({r["label"]: r["score"] for r in found})
    return out


def test_a_pair_is_classified_as_the_pipeline_classifies_it(engine: Engine, tiny_nli_dir: Path) -> None:
    from shared.serving.classifier import classify

    mixed = [PAIRS[0], "one text on its own", PAIRS[1]]
    mine = classify(engine, mixed)
    expected = pipeline_scores(tiny_nli_dir, mixed)
    first_alone = pipeline_scores(tiny_nli_dir, [p.text for p in PAIRS])
    for classification, reference in zip(mine, expected, strict=True):
        scores = {s.label: s.score for s in classification.prediction}
        assert max(abs(scores[k] - reference[k]) for k in NLI) <= 1e-5
    # The pair is not its first text: the scores differ well beyond noise.
    for classification, alone in zip([mine[0], mine[2]], first_alone, strict=True):
        scores = {s.label: s.score for s in classification.prediction}
        assert max(abs(scores[k] - alone[k]) for k in NLI) > 1e-3
    assert mine[0].truncated_texts == [] and mine[1].truncated_texts is None


@pytest.mark.parametrize("problem_type", [None, "regression"])  # None: one label, a sigmoid
def test_cross_encoder_heads_score_and_explain_pairs(problem_type: str | None, tmp_path: Path) -> None:
    """A cross-encoder's head: one label (a relevance score, sigmoid) or a regression (the logit as
    it is), on pairs as transformers' pipeline scores them, explained additively over both texts."""
    from transformers import pipeline

    from shared.serving.classifier import classify
    from tests.support import build_tiny_model

    directory = build_tiny_model(tmp_path / "cross-encoder", ["relevance"], problem_type=problem_type, seed=5)
    engine = start_engine(directory)
    try:
        classified = classify(engine, PAIRS)
        ranker = pipeline("text-classification", model=str(directory), tokenizer=str(directory))
        activation = "none" if problem_type == "regression" else "sigmoid"
        for pair, answer in zip(PAIRS, classified, strict=True):
            (expected,) = ranker(
                {"text": pair.text, "text_pair": pair.text_pair}, function_to_apply=activation, top_k=None
            )
            assert [s.label for s in answer.prediction] == ["relevance"]
            assert answer.prediction[0].score == pytest.approx(expected["score"], abs=1e-5)
        options = ExplainOptions(max_evals=200, granularity="word", labels="all")
        (explanation,) = explain_encoded(engine, engine.model.encode([PAIRS[1]]), options)
        assert set(explanation.segments) == {0, 1}
        total = explanation.base_values["relevance"] + sum(explanation.values["relevance"])
        assert total == pytest.approx(explanation.model_output["relevance"], abs=1e-6)
        assert max(map(abs, explanation.values["relevance"])) > 1e-4  # not float noise
    finally:
        engine.stop()


def test_truncation_says_which_text_it_shortened(engine: Engine, tiny_nli_dir: Path) -> None:
    from shared.serving.classifier import classify

    long_pair = TextPair("short premise", " ".join(["a very long hypothesis"] * 40))
    (classification,) = classify(engine, [long_pair])
    assert classification.truncated and classification.truncated_texts == ["text_pair"]
    (expected,) = pipeline_scores(tiny_nli_dir, [long_pair])  # the pipeline truncates longest first too
    scores = {s.label: s.score for s in classification.prediction}
    assert max(abs(scores[k] - expected[k]) for k in NLI) <= 1e-5


@pytest.mark.parametrize("granularity", ["token", "word"])
def test_explanations_cover_both_texts_and_add_up(engine: Engine, granularity: str) -> None:
    options = ExplainOptions(max_evals=400, granularity=granularity)
    explanations = explain_encoded(engine, engine.model.encode(PAIRS), options)
    for pair, explanation in zip(PAIRS, explanations, strict=True):
        assert explanation.segments is not None and set(explanation.segments) == {0, 1}
        texts = (pair.text, pair.text_pair)
        for unit, (start, end), side in zip(
            explanation.units, explanation.offsets, explanation.segments, strict=True
        ):
            if start < end:  # a unit's span indexes into its own text
                assert texts[side][start:end] == unit
        if granularity == "word":
            assert [u for u, s in zip(explanation.units, explanation.segments, strict=True) if s == 1][
                :2
            ] == [
                pair.text_pair.split()[0],
                pair.text_pair.split()[1],
            ]
        for label in explanation.labels:
            total = explanation.base_values[label] + sum(explanation.values[label])
            assert total == pytest.approx(explanation.model_output[label], abs=1e-6)


def test_the_trees_first_split_separates_the_two_texts(engine: Engine) -> None:
    from shared.explanation.owen import mask_matrix

    encoded = engine.model.encode(PAIRS[:1])[0]
    game = new_game(engine.model, encoded, ExplainOptions(granularity="word"))
    root = game.clustering[-1]
    masks = mask_matrix(game.clustering)
    sides = np.array(game.sides)
    left, right = masks[int(root[0])], masks[int(root[1])]
    assert (sides[left] == 0).all() and (sides[right] == 1).all() and (left | right).all()


def shap_partition_values(model: TextModel, encoded, game, options: ExplainOptions) -> np.ndarray:
    """SHAP's PartitionExplainer over the game's players and tree, with the model called on token
    ids and the pair's token types: the reference for "the same hierarchy"."""
    import torch

    def f(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        kinds = torch.tensor(np.broadcast_to(encoded.types, rows.shape).copy())
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor(rows), token_type_ids=kinds).logits.numpy()
        return model.outputs(logits, options.output)

    return shap_partition_reference(game, model.mask_token_id, f, options)


@pytest.mark.parametrize("granularity", ["token", "word"])
@pytest.mark.parametrize("max_evals", [60, 2000])
def test_token_masking_equals_shaps_partition_values_for_the_same_tree(
    engine: Engine, granularity: str, max_evals: int
) -> None:
    options = ExplainOptions(max_evals=max_evals, granularity=granularity, labels="all", seed=4)
    encoded = engine.model.encode(PAIRS[:1])[0]
    game = new_game(engine.model, encoded, options)
    (explanation,) = explain_encoded(engine, [encoded], options)
    mine = np.array([explanation.values[label] for label in explanation.labels]).T
    reference = shap_partition_values(engine.model, encoded, game, options)
    assert reference.shape[0] == game.players
    assert_close_to_scale(mine, reference, rel=1e-5)


def shap_text_masking_reference(
    model_dir: Path, pair: TextPair, options: ExplainOptions, labels: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """shap.Explainer as SHAP documents text of two inputs (its question-answering example): one
    string, the two texts joined by the tokenizer's separator, SHAP's own Text masker over it (string
    output); the model splits each masked string at the separator and scores the pair as
    transformers' pipeline does."""
    import shap
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(model_dir), tokenizer=str(model_dir), top_k=None)
    sep = classifier.tokenizer.sep_token
    apply = "none" if options.output == "logit" else "softmax"

    def f(strings: np.ndarray) -> np.ndarray:
        out = []
        for masked in strings:
            text, text_pair = masked.split(sep)
            found = classifier(
                {"text": text, "text_pair": text_pair}, truncation=True, function_to_apply=apply
            )
            scores = {r["label"]: r["score"] for r in (found[0] if isinstance(found[0], list) else found)}
            out.append([scores[label] for label in labels])
        return np.array(out)

    explainer = shap.Explainer(f, shap.maskers.Text(classifier.tokenizer), output_names=labels)
    np.random.seed(options.seed)
    result = explainer(
        [pair.text + sep + pair.text_pair],
        max_evals=options.max_evals,
        batch_size=options.batch_size,
        silent=True,
    )
    return result.values[0], result.base_values[0]


@pytest.mark.parametrize(
    ("max_evals", "output"), [(60, "probability"), (2000, "probability"), (200, "logit")]
)
def test_text_masking_equals_shap_explainer_on_the_joined_pair(
    engine: Engine, tiny_nli_dir: Path, max_evals: int, output: str
) -> None:
    """masking "text" on a pair: SHAP's players (the pair joined by [SEP], every token), its tree
    (first split between the two texts), its masked strings, each pair encoded again as the pipeline
    encodes it; cut (60) and whole (2000) trees."""
    options = ExplainOptions(max_evals=max_evals, masking="text", labels="all", output=output, seed=4)
    pair = PAIRS[0]
    (explanation,) = explain_encoded(engine, engine.model.encode([pair]), options)
    values, base = shap_text_masking_reference(tiny_nli_dir, pair, options, engine.model.labels)
    mine = np.array([explanation.values[label] for label in explanation.labels]).T
    assert explanation.labels == NLI and explanation.masking == "text"
    assert_close_to_scale(mine, values, rel=1e-5)
    assert_close_to_scale(list(explanation.base_values.values()), base, rel=1e-5)
    assert np.abs(values).max() > 1e-2  # the values carry signal, not float noise
    # The players are both texts' tokens (and the three special tokens), each indexing its own text.
    assert set(explanation.segments) == {0, 1}
    texts = (pair.text, pair.text_pair)
    for unit, (start, end), side in zip(
        explanation.units, explanation.offsets, explanation.segments, strict=True
    ):
        if start < end:
            assert texts[side][start:end] == unit
    assert explanation.units.count("[SEP]") == 2 and explanation.units[0] == "[CLS]"
    for label in explanation.labels:
        total = explanation.base_values[label] + sum(explanation.values[label])
        assert total == pytest.approx(explanation.model_output[label], abs=1e-6)


def test_text_masking_at_word_granularity_splits_between_the_texts_first(engine: Engine) -> None:
    from shared.explanation.owen import mask_matrix

    options = ExplainOptions(max_evals=300, masking="text", granularity="word")
    encoded = engine.model.encode(PAIRS[1:])
    game = new_game(engine.model, encoded[0], options)
    root, masks, sides = game.clustering[-1], mask_matrix(game.clustering), np.array(game.sides)
    assert (sides[masks[int(root[0])]] == 0).all() and (sides[masks[int(root[1])]] == 1).all()
    (explanation,) = explain_encoded(engine, encoded, options)
    words = [u for u, s in zip(explanation.units, explanation.segments, strict=True) if s == 1]
    assert words == PAIRS[1].text_pair.split()
    for label in explanation.labels:
        total = explanation.base_values[label] + sum(explanation.values[label])
        assert total == pytest.approx(explanation.model_output[label], abs=1e-6)


def test_what_a_pair_cannot_take_is_a_clear_400(engine: Engine, tmp_path: Path) -> None:
    model = engine.model
    with pytest.raises(InvalidRequest, match="windows"):
        model.encode(PAIRS[:1], "windows")
    encoded = model.encode(PAIRS[:1])
    holding = model.encode([TextPair("a [SEP] b", "c")])  # masking "text" could not split it back
    with pytest.raises(InvalidRequest, match="separator"):
        explain_encoded(engine, holding, ExplainOptions(max_evals=60, masking="text"))
    with pytest.raises(InvalidRequest, match="faithfulness"):
        explain_encoded(engine, encoded, ExplainOptions(max_evals=60, faithfulness=True))


def test_a_tokenizer_without_a_pair_template_refuses_pairs(tmp_path: Path) -> None:
    from tests.families import build_gpt2_model

    gpt2 = start_engine(
        build_gpt2_model(tmp_path / "gpt2", labels=["no", "yes"], config_pad=True, tokenizer_pad=False)
    )
    try:
        with pytest.raises(InvalidRequest, match="template for text pairs"):
            gpt2.model.encode(PAIRS[:1])
        from api.kserve.v2 import metadata

        assert [tensor["name"] for tensor in metadata(gpt2.model)["inputs"]] == ["text"]  # no text_pair
    finally:
        gpt2.stop()


def test_pairs_over_http(tiny_nli_dir: Path, tmp_path: Path) -> None:
    """/invocations (one pair, a list mixing pairs and texts, [q, p]) and KServe V1 instances give
    the same answers, and so do jobs; the HTML view says it takes single texts."""
    env = {"MODEL_DIR": str(tiny_nli_dir), "SERVERLESS": "true"}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        pair = {"text": PAIRS[0].text, "text_pair": PAIRS[0].text_pair}
        one = service.post("/invocations", json={"data": pair, "explain": True, "max_evals": 100})
        assert one.status_code == 200, one.text
        body = one.json()
        assert isinstance(body, dict) and set(body["segments"]) == {0, 1}
        assert body["truncated"] is False and body["truncated_texts"] == []
        listed = service.post("/invocations", json={"data": [[PAIRS[0].text, PAIRS[0].text_pair], "alone"]})
        assert listed.status_code == 200 and len(listed.json()) == 2
        assert listed.json()[0]["prediction"] == body["prediction"]
        assert "truncated_texts" not in listed.json()[1]
        model = service.get("/ping").json()["model"]
        v1 = service.post(f"/v1/models/{model}:predict", json={"instances": [pair]})
        assert v1.status_code == 200 and v1.json()["predictions"][0]["prediction"] == body["prediction"]
        # JSON Lines records (Batch Transform): a text_pair beside the text, or Clarify's two features.
        lines = json.dumps(pair) + "\n" + json.dumps({"features": [PAIRS[0].text, PAIRS[0].text_pair]}) + "\n"
        lines += json.dumps({"text": "one text"}) + "\n" + json.dumps({"text": "a", "text_pair": 3}) + "\n"
        headers = {"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"}
        answered = service.post("/invocations", data=lines.encode(), headers=headers)
        assert answered.status_code == 200, answered.text
        first, clarify, single, bad = (json.loads(line) for line in answered.text.splitlines())
        assert first["prediction"] == clarify["prediction"] == body["prediction"]
        assert "truncated_texts" not in single and "text pair record" in bad["error"]["message"]
        # A job explains the pair as the request does; async on /invocations submits one too.
        job = service.post("/explanations", json={"data": pair, "max_evals": 100})
        assert job.status_code == 200 and job.json()["status"] == "succeeded", job.text
        assert_same_explanation(job.json()["result"], body)
        submitted = service.post("/invocations", json={"data": [pair], "explain": True, "async": True})
        assert submitted.status_code == 200 and submitted.json()["status"] == "succeeded"
        page = service.get(f"/explanations/{job.json()['id']}", headers={"Accept": "text/html"})
        assert page.status_code == 400 and "text pairs" in page.json()["error"]["message"]
        # masking "text": SHAP's joined string; a job gives the request's answer.
        by_text = {"data": pair, "explain": True, "max_evals": 80, "masking": "text"}
        text_masked = service.post("/invocations", json=by_text)
        assert text_masked.status_code == 200, text_masked.text
        assert text_masked.json()["explanation_parameters"]["masking"] == "text"
        assert set(text_masked.json()["segments"]) == {0, 1}
        text_job = service.post("/explanations", json={k: v for k, v in by_text.items() if k != "explain"})
        assert text_job.status_code == 200 and text_job.json()["status"] == "succeeded", text_job.text
        assert_same_explanation(text_job.json()["result"], text_masked.json())
        holding = {**by_text, "data": {"text": "a [SEP] b", "text_pair": "c"}}  # cannot be split back
        refused_job = service.post("/invocations", json=holding)
        assert refused_job.status_code == 400 and "separator" in refused_job.json()["error"]["message"]
        bad = service.post("/invocations", json={"data": {"text": "a", "text_pair": "b", "extra": 1}})
        assert bad.status_code == 400 and "text_pair" in bad.json()["error"]["message"]
        for refused in ({"precision": "amortized"}, {"faithfulness": True}):
            for explain in (True, False):  # refused either way, as the OpenAPI document says
                answer = service.post("/invocations", json={"data": pair, "explain": explain, **refused})
                assert answer.status_code == 400, (refused, answer.text)


def test_kserve_v2_reads_a_text_pair_input_beside_the_text(nli_service) -> None:
    """A second BYTES input `text_pair` makes each row a pair: in JSON or binary data, in either
    order, with attributions of both texts; the metadata lists it; candidate labels with a text_pair
    input are refused (zero-shot pairs the text with each label's hypothesis itself)."""
    import tritonclient.http as triton_http

    model = nli_service.get("/ping").json()["model"]
    inputs = nli_service.get(f"/v2/models/{model}").json()["inputs"]
    assert inputs[1] == {"name": "text_pair", "datatype": "BYTES", "shape": [-1], "optional": True}
    expected = invocations_scores(nli_service, PAIRS, explain=True, max_evals=60)
    labels = nli_service.get("/ping").json()["labels"]
    want = np.array(
        [[{e["label"]: e["score"] for e in r["prediction"]}[name] for name in labels] for r in expected]
    )

    def tensor(name: str, texts: list[str]) -> dict:
        return {"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": texts}

    text, pair = tensor("text", [p.text for p in PAIRS]), tensor("text_pair", [p.text_pair for p in PAIRS])
    for order in ([text, pair], [pair, text]):
        body = {"inputs": order, "parameters": {"explain": True, "max_evals": 60}}
        answer = nli_service.post(f"/v2/models/{model}/infer", json=body)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o for o in answer.json()["outputs"]}
        scores = np.array(outputs["scores"]["data"]).reshape(len(PAIRS), len(labels))
        np.testing.assert_allclose(scores, want, rtol=0, atol=1e-6)
        documents = [json.loads(d) for d in outputs["attributions"]["data"]]
        assert all(set(d["explanation_parameters"]) and d["offsets"] for d in documents)
        assert [len(d["explanation"]) for d in documents] == [len(r["explanation"]) for r in expected]
    # tritonclient, every input and output as binary data
    client = triton_http.InferenceServerClient(url=nli_service.url.removeprefix("http://"))
    try:
        tensors = []
        for name, texts in (("text", [p.text for p in PAIRS]), ("text_pair", [p.text_pair for p in PAIRS])):
            tensors.append(triton_http.InferInput(name, [len(texts)], "BYTES"))
            tensors[-1].set_data_from_numpy(np.array(texts, dtype=np.object_), binary_data=True)
        result = client.infer(model, tensors)
        np.testing.assert_allclose(result.as_numpy("scores"), want, rtol=0, atol=1e-6)
    finally:
        client.close()
    zero_shot = {"inputs": [text, pair], "parameters": {"candidate_labels": ["a", "b"]}}
    refused = nli_service.post(f"/v2/models/{model}/infer", json=zero_shot)
    assert refused.status_code == 400 and "candidate_labels" in refused.json()["error"]
    windows = {"inputs": [text, pair], "parameters": {"long_text": "windows"}}
    refused = nli_service.post(f"/v2/models/{model}/infer", json=windows)
    assert refused.status_code == 400 and "windows" in refused.json()["error"]


def test_the_v2_request_schema_takes_a_text_pair_input_of_the_same_shape(nli_service) -> None:
    """What the OpenAPI document calls a valid V2 body is what the server takes: a text_pair input
    beside the text (either order), of the same shape, with what pairs take."""
    from jsonschema import Draft202012Validator

    components = nli_service.get("/openapi.json").json()["components"]
    request = {"$ref": "#/components/schemas/KServeV2InferRequest", "components": components}
    valid = Draft202012Validator(request).is_valid

    def tensor(name: str, texts: list[str]) -> dict:
        return {"name": name, "shape": [len(texts)], "datatype": "BYTES", "data": texts}

    text, pair = tensor("text", ["a", "b"]), tensor("text_pair", ["c", "d"])
    assert valid({"inputs": [text]}) and valid({"inputs": [text, pair]}) and valid({"inputs": [pair, text]})
    assert not valid({"inputs": [pair]}) and not valid({"inputs": [text, text]})
    assert not valid({"inputs": [text, tensor("text_pair", ["c"])]})  # one second text per row
    assert not valid({"inputs": [text, pair], "parameters": {"precision": "amortized"}})
    assert valid({"inputs": [text, pair], "parameters": {"masking": "text"}})
    assert valid({"inputs": [text], "parameters": {"masking": "text"}})


def test_a_csv_body_reads_the_text_pair_from_the_pair_column(nli_service) -> None:
    """The custom attribute pair_column=<n> makes each CSV row a pair, its second text in column n;
    a row without it is that record's own error, never its first text's answer."""
    expected = invocations_scores(nli_service, PAIRS)
    rows = "".join(f'"{p.text}",x,"{p.text_pair}"\n' for p in PAIRS)
    attributes = {"X-Amzn-SageMaker-Custom-Attributes": "pair_column=3;trace=t-1"}
    headers = {"Content-Type": "text/csv", "Accept": "application/jsonlines", **attributes}
    body = rows + '"only a text",x\n' + '"a text",x,"  "\n' + rows.splitlines()[0] + "\n"
    answered = nli_service.post("/invocations", data=body.encode(), headers=headers)
    assert answered.status_code == 200, answered.text
    assert answered.headers["X-Amzn-SageMaker-Custom-Attributes"].endswith(";pair_column=3;trace=t-1")
    first, second, short, blank, again = (json.loads(line) for line in answered.text.splitlines())
    assert [first["prediction"], second["prediction"]] == [r["prediction"] for r in expected]
    assert again["prediction"] == first["prediction"] and first["truncated_texts"] == []
    assert short["error"]["message"] == "line 3: no text_pair in column 3"
    assert blank["error"]["message"] == "line 4: no text_pair in column 3"
    as_csv = nli_service.post("/invocations", data=rows.encode(), headers={**headers, "Accept": "text/csv"})
    assert as_csv.status_code == 200 and len(as_csv.text.splitlines()) == len(PAIRS)
    refused = nli_service.post("/invocations", data=body.encode(), headers={**headers, "Accept": "text/csv"})
    assert refused.status_code == 400 and "no text_pair in column 3" in refused.json()["error"]["message"]
    # Without pair_column a CSV body reads its first column, as before.
    plain = nli_service.post("/invocations", data=rows.encode(), headers={"Content-Type": "text/csv"})
    assert plain.status_code == 200 and all(
        "truncated_texts" not in json.loads(x) for x in plain.text.split()
    )
    lines = json.dumps({"text": "a", "text_pair": "b"}) + "\n"
    for content_type, data, value, message in (
        ("application/jsonlines", lines, "2", "names a CSV body's column"),
        ("application/json", json.dumps({"data": "a text"}), "2", "reads a CSV body's column"),
        ("text/csv", rows, "1", "2 or more"),
        ("text/csv", rows, "x", "2 or more"),
        ("text/csv", rows, "", "2 or more"),
    ):
        sent = {"Content-Type": content_type, "X-Amzn-SageMaker-Custom-Attributes": f"pair_column={value}"}
        answer = nli_service.post("/invocations", data=data.encode(), headers=sent)
        assert answer.status_code == 400 and message in answer.json()["error"]["message"], (
            value,
            answer.text,
        )
    job = nli_service.post(
        "/explanations", json={"data": "a"}, headers={"X-Amzn-SageMaker-Custom-Attributes": "pair_column=2"}
    )
    assert job.status_code == 400 and "pair_column" in job.json()["error"]["message"]


def test_clarifys_exchange_answers_two_feature_columns_as_two_text_features(nli_service) -> None:
    """Clarify's {"features": [q, p]} records (a two-column dataset) are classified and explained as
    pairs; each record's explanation lists two text features, each indexing into its own text, and
    together they are /invocations' explanation of the pair."""
    expected = invocations_scores(nli_service, PAIRS, explain=True, max_evals=60, granularity="word")
    lines = "".join(json.dumps({"features": [p.text, p.text_pair]}) + "\n" for p in PAIRS)
    lines += json.dumps({"features": ["one text alone"]}) + "\n"
    headers = {"Content-Type": "application/jsonlines", "Accept": "application/json"}
    answered = nli_service.post("/invocations", data=lines.encode(), headers=headers)
    assert answered.status_code == 200, answered.text
    clarify = answered.json()
    labels = clarify["label_headers"]
    rows = [[float(v) for v in line.split(",")] for line in clarify["predictions"]["data"].splitlines()]
    for row, result in zip(rows, expected, strict=False):
        scores = {e["label"]: e["score"] for e in result["prediction"]}
        np.testing.assert_allclose(row, [scores[label] for label in labels], rtol=0, atol=1e-6)
    records = clarify["explanations"]["kernel_shap"]
    assert [len(features) for features in records] == [2, 2, 1]
    for pair, features, result in zip(PAIRS, records, expected, strict=False):
        for feature, text in zip(features, (pair.text, pair.text_pair), strict=True):
            assert feature["feature_type"] == "text" and feature["attributions"]
            for a in feature["attributions"]:
                start, unit = a["description"]["start_idx"], a["description"]["partial_text"]
                assert text[start : start + len(unit)] == unit
        mine = [a["attribution"] for feature in features for a in feature["attributions"]]
        units = [
            [values[label] for label in labels]
            for (_, values), (start, end) in zip(result["explanation"], result["offsets"], strict=True)
            if end > start
        ]
        np.testing.assert_allclose(mine, units, rtol=0, atol=1e-6)
    # A CSV body with pair_column is Clarify's two columns too.
    rows_csv = "".join(f'"{p.text}","{p.text_pair}"\n' for p in PAIRS)
    attributes = {"X-Amzn-SageMaker-Custom-Attributes": "pair_column=2"}
    as_csv = nli_service.post(
        "/invocations", data=rows_csv.encode(), headers={**headers, "Content-Type": "text/csv", **attributes}
    )
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.json()["explanations"] == {"kernel_shap": records[:2]}


def test_clarion_explain_reads_a_pair_field_here_and_over_url(
    nli_service, tiny_nli_dir: Path, tmp_path: Path
) -> None:
    """`clarion explain --pair-field NAME`: each .jsonl record's or .csv row's second text, explained
    in this process and through a running server alike, as /invocations explains the pair; a record
    without it is that line's error; what pairs cannot take stops the run before any work."""
    expected = invocations_scores(nli_service, PAIRS, explain=True, max_evals=60, granularity="word")
    jsonl = tmp_path / "pairs.jsonl"
    rows = [{"premise": p.text, "hypothesis": p.text_pair, "gold": "x"} for p in PAIRS]
    jsonl.write_text("\n".join(json.dumps(r) for r in [*rows, {"premise": "alone"}]) + "\n")
    table = tmp_path / "pairs.csv"
    table.write_text(
        "premise,hypothesis\n" + "".join(f'"{p.text}","{p.text_pair}"\n' for p in PAIRS) + "q,\n"
    )
    common = ("--pair-field", "hypothesis", "--max-evals", "60", "--granularity", "word")
    env = {"MODEL_DIR": str(tiny_nli_dir)}
    outputs = []
    for source, where in ((jsonl, ()), (table, ("--url", nli_service.url))):
        out = tmp_path / f"{source.suffix[1:]}-{len(where)}.out"
        run = run_cli(
            "explain", str(source), "--out", str(out), "--field", "premise", "--column", "premise",
            *common, *where, timeout=300, **env,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    for found in outputs:
        by_line = {r["line"]: r for r in found}
        pairs = [r for r in found if "error" not in r]
        assert [(r["text"], r["text_pair"]) for r in pairs] == [(p.text, p.text_pair) for p in PAIRS]
        for mine, theirs in zip(pairs, expected, strict=True):
            assert mine["segments"] == theirs["segments"]
            assert_same_prediction(mine["prediction"], theirs["prediction"])
            assert_same_explanation(mine, theirs)
        assert "hypothesis" in by_line[max(by_line)]["error"]["message"]
    refused = run_cli(
        "explain", str(jsonl), "--out", str(tmp_path / "r.out"), "--faithfulness", *common, **env
    )
    assert refused.returncode == 2 and "faithfulness" in refused.stderr
    refused = run_cli(
        "explain", str(jsonl), "--out", str(tmp_path / "r.out"), "--html", "x.html", *common, **env
    )
    assert refused.returncode == 2 and "--html" in refused.stderr
    # Without --pair-field a record's text_pair is its own error, never its first text's answer.
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"text": PAIRS[0].text, "text_pair": PAIRS[0].text_pair}) + "\n")
    without = run_cli("explain", str(plain), "--out", str(tmp_path / "w.out"), "--max-evals", "60", **env)
    assert (
        without.returncode == 0
        and "--pair-field" in json.loads((tmp_path / "w.out").read_text())["error"]["message"]
    )
