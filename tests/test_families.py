"""Every family people bring: BERT, DistilBERT, ELECTRA, RoBERTa, XLM-R, DeBERTa-v2/v3, ALBERT and
ModernBERT, and the decoder classifiers GPT-2, Llama, Qwen2 and Gemma (their head reads each row's last
token), each a tiny random-weight model with a tokenizer of its family trained offline.

For each: classification equals transformers' pipeline for every head kind; token attributions equal
SHAP's (token-id masker) and masking "text" equals `shap.Explainer(pipeline)`, the seed's own call;
word units are the text's words without the spaces the tokenizers' offsets carry; additivity holds
at every granularity; onnxruntime gives torch's logits up to the model's maximum length. Every check
applies to the decoders as it is: none is skipped for them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.explanation.explainer import explain_texts
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import CPU_PASS, Engine
from shared.runtime.loading import load_text_model
from shared.runtime.model import TextModel
from shared.runtime.onnx import onnx_exact
from shared.serving.classifier import classify
from shared.settings import Settings
from tests.families import FAMILIES, build_family_model
from tests.support import start_engine

TEXTS = [
    "I don't think it's the director's best. But it is still worth watching.",
    "Such a fun night  at the movies 🎬 loved every minute 😀",
    "A naïve but charming story about a café owner.\n\nWe've seen this plot before. 我喜欢这部电影",
]
# The words of TEXTS[0] and TEXTS[1] as a reader splits them: inner apostrophes stay, punctuation
# and emoji stand alone.
WORDS = [
    [
        "I",
        "don't",
        "think",
        "it's",
        "the",
        "director's",
        "best",
        ".",
        "But",
        "it",
        "is",
        "still",
        "worth",
        "watching",
        ".",
    ],
    ["Such", "a", "fun", "night", "at", "the", "movies", "🎬", "loved", "every", "minute", "😀"],
]
LABELS = ["negative", "neutral", "positive"]
# (labels, num_labels, problem type, custom id2label): the head kinds transformers' pipeline tells apart
HEADS = {
    "softmax": dict(labels=LABELS),
    "multi-label": dict(labels=LABELS, problem_type="multi_label_classification"),
    "one-label": dict(num_labels=1, problem_type=None),
    "regression": dict(num_labels=1, problem_type="regression"),
    "no-id2label": dict(num_labels=2, id2label=False),
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def family_dir(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_family_model(tmp_path_factory.mktemp(family), family, LABELS, seed=3)


@pytest.fixture(scope="module")
def engine(family_dir: Path) -> Engine:
    engine = start_engine(family_dir)
    yield engine
    engine.stop()


def pipeline_of(directory: Path):
    import transformers

    return transformers.pipeline(
        "text-classification", model=str(directory), tokenizer=str(directory), top_k=None
    )


def values_matrix(explanation) -> np.ndarray:
    return np.array([explanation.values[label] for label in explanation.labels]).T


@pytest.mark.parametrize("head", HEADS)
def test_classification_equals_the_pipeline(family: str, head: str, tmp_path: Path) -> None:
    directory = build_family_model(tmp_path, family, **HEADS[head])
    model = load_text_model(Settings(model_dir=str(directory), torch_threads=1))
    expected_activation = {"softmax": "softmax", "regression": "none"}.get(head, "sigmoid")
    if head == "no-id2label":
        expected_activation = "softmax"
        assert model.labels == ["LABEL_0", "LABEL_1"]  # transformers' own default names
    assert model.activation == expected_activation
    engine = Engine(model, CPU_PASS)
    try:
        mine = classify(engine, TEXTS)
    finally:
        engine.stop()
    theirs = pipeline_of(directory)(TEXTS)
    for classification, reference in zip(mine, theirs, strict=True):
        got = {s.label: s.score for s in classification.prediction}
        want = {r["label"]: r["score"] for r in reference}
        assert got.keys() == want.keys()
        for label, score in want.items():
            assert got[label] == pytest.approx(score, abs=1e-6), (label, got, want)
        if head == "one-label":  # a sigmoid, not a softmax over one logit (which is always 1.0)
            assert 0 < got[model.labels[0]] < 1


def shap_token_ids(model: TextModel, text: str, max_evals: int) -> np.ndarray:
    """SHAP's Partition explainer with its Text masker in token-id space."""
    import shap

    def f(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor(np.asarray(ids, dtype=np.int64))).logits.numpy()
        return model.outputs(logits, "probability")

    masker = shap.maskers.Text(model.tokenizer, output_type="token_ids")
    np.random.seed(0)
    return shap.Explainer(f, masker, algorithm="partition")([text], max_evals=max_evals, silent=True).values[
        0
    ]


def test_token_attributions_equal_shaps(family: str, engine: Engine) -> None:
    options = ExplainOptions(max_evals=120)
    for text in TEXTS[:2]:
        (mine,) = explain_texts(engine, [text], options)
        np.testing.assert_allclose(
            values_matrix(mine), shap_token_ids(engine.model, text, 120), atol=1e-5, rtol=0
        )


def test_text_masking_equals_shap_explainer_on_the_pipeline(
    family: str, engine: Engine, family_dir: Path
) -> None:
    """The seed's own call: shap.Explainer(pipeline(top_k=None)), SHAP's string masker."""
    import shap

    options = ExplainOptions(max_evals=120, masking="text")
    mine = explain_texts(engine, TEXTS[:2], options)
    explainer = shap.Explainer(pipeline_of(family_dir))
    np.random.seed(0)
    theirs = explainer(TEXTS[:2], max_evals=120, silent=True)
    for i, explanation in enumerate(mine):
        assert explanation.masking == "text"
        np.testing.assert_allclose(values_matrix(explanation), theirs.values[i], atol=1e-5, rtol=0)
        np.testing.assert_allclose(list(explanation.base_values.values()), theirs.base_values[i], atol=1e-5)


def test_word_units_are_the_texts_words(family: str, engine: Engine) -> None:
    explanations = explain_texts(engine, TEXTS, ExplainOptions(max_evals=40, granularity="word"))
    for text, explanation in zip(TEXTS, explanations, strict=True):
        for unit, (start, end) in zip(explanation.units, explanation.offsets, strict=True):
            assert unit == text[start:end] and unit == unit.strip() and unit, (unit, start, end)
        ends = [end for _, end in explanation.offsets]
        starts = [start for start, _ in explanation.offsets]
        assert all(e <= s for e, s in zip(ends, starts[1:], strict=False)), (
            "units overlap or are out of order"
        )
    for words, explanation in zip(WORDS, explanations, strict=False):
        assert explanation.units == words
    # CJK: a unit per character where the tokenizer splits them (WordPiece does), else whole tokens
    cjk = "我喜欢这部电影"
    start = TEXTS[2].index(cjk)
    units = [
        u for u, (s, _) in zip(explanations[2].units, explanations[2].offsets, strict=True) if s >= start
    ]
    assert "".join(units) == cjk
    if family in ("bert", "distilbert", "electra"):
        assert units == list(cjk)


@pytest.mark.parametrize("granularity", ["token", "word", "sentence", "paragraph"])
def test_additivity_at_every_granularity(family: str, engine: Engine, granularity: str) -> None:
    options = ExplainOptions(max_evals=60, granularity=granularity, masking="tokens")
    for explanation in explain_texts(engine, TEXTS, options):
        for label in explanation.labels:
            total = explanation.base_values[label] + sum(explanation.values[label])
            assert total == pytest.approx(explanation.model_output[label], abs=1e-6)
        for unit in explanation.units:  # no unit, at any granularity, carries surrounding whitespace
            assert unit == unit.strip()


def test_onnxruntime_equals_torch_up_to_the_maximum_length(
    family: str, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = engine.model
    caplog.set_level(logging.INFO)
    runner = onnx_exact(model, tmp_path, threads=1)
    words = " ".join(TEXTS * 40)
    (long,) = model.encode([words])
    assert len(long.ids) == model.max_length
    short = model.encode(TEXTS)
    for rows in ([e.ids for e in short], [long.ids, short[0].ids], [long.ids]):
        ids, attention = model.padded(rows)
        expected = model.torch_forward(ids, attention)
        if ids.shape[1] <= runner.max_width:
            np.testing.assert_allclose(runner(ids, attention), expected, atol=1e-5, rtol=0)
    # whatever the graph covers, the model's own pass (as the engine calls it) gives torch's logits
    model.exact_runner = runner
    try:
        expected = model.torch_forward(*model.padded([long.ids]))
        np.testing.assert_allclose(model.forward([long.ids]), expected, atol=1e-5, rtol=0)
    finally:
        model.exact_runner = None


@pytest.mark.e2e
def test_a_byte_level_bpe_model_over_http(tmp_path: Path) -> None:
    """As a user would: a RoBERTa served by `clarion serve`, word units and the seed's masking."""
    from tests.support import running_service, wait_healthy

    directory = build_family_model(tmp_path / "roberta", "roberta", ["negative", "positive"])
    text = "I don't think it's the director's best.  But it is."
    with running_service(tmp_path, {"SERVERLESS": "true", "MODEL_DIR": str(directory)}) as service:
        wait_healthy(service)
        options = {"explain": True, "granularity": "word", "masking": "text", "max_evals": 60}
        body = service.post("/invocations", json={"data": text, **options}).json()
        assert body["explanation_parameters"]["masking"] == "text"
        units = [unit for unit, _ in body["explanation"]]
        assert units == [*WORDS[0][:11], "."]  # the double space before "But" is no unit
        assert [text[start:end] for start, end in body["offsets"]] == units
        refused = service.post("/invocations", json={"data": text, **options, "long_text": "windows"})
        assert refused.status_code == 400
        assert "masking" in refused.json()["error"]["message"]
