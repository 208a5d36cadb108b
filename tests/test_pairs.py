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


def test_what_a_pair_cannot_take_is_a_clear_400(engine: Engine, tmp_path: Path) -> None:
    model = engine.model
    with pytest.raises(InvalidRequest, match="windows"):
        model.encode(PAIRS[:1], "windows")
    encoded = model.encode(PAIRS[:1])
    with pytest.raises(InvalidRequest, match="masking"):
        explain_encoded(engine, encoded, ExplainOptions(max_evals=60, masking="text"))
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
    finally:
        gpt2.stop()


def test_pairs_over_http(tiny_nli_dir: Path, tmp_path: Path) -> None:
    """/invocations (one pair, a list mixing pairs and texts, [q, p]) and KServe V1 instances give
    the same answers, and so do jobs; Clarify's exchange and the HTML view say they take single texts."""
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
        as_clarify = {"Content-Type": "application/jsonlines", "Accept": "application/json"}
        refused = service.post(
            "/invocations", data=lines.encode()[: lines.index("\n") + 1], headers=as_clarify
        )
        assert refused.status_code == 400 and "Clarify" in refused.json()["error"]["message"]
        # A job explains the pair as the request does; async on /invocations submits one too.
        job = service.post("/explanations", json={"data": pair, "max_evals": 100})
        assert job.status_code == 200 and job.json()["status"] == "succeeded", job.text
        assert_same_explanation(job.json()["result"], body)
        submitted = service.post("/invocations", json={"data": [pair], "explain": True, "async": True})
        assert submitted.status_code == 200 and submitted.json()["status"] == "succeeded"
        page = service.get(f"/explanations/{job.json()['id']}", headers={"Accept": "text/html"})
        assert page.status_code == 400 and "text pairs" in page.json()["error"]["message"]
        refused_job = service.post("/explanations", json={"data": pair, "masking": "text"})
        assert refused_job.status_code == 400 and "masking" in refused_job.json()["error"]["message"]
        bad = service.post("/invocations", json={"data": {"text": "a", "text_pair": "b", "extra": 1}})
        assert bad.status_code == 400 and "text_pair" in bad.json()["error"]["message"]
        for refused in ({"precision": "amortized"}, {"faithfulness": True}, {"masking": "text"}):
            answer = service.post("/invocations", json={"data": pair, "explain": True, **refused})
            assert answer.status_code == 400, (refused, answer.text)
