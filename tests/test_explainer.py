"""The explainer: SHAP's own numbers (id-space Text masker), additivity, options, many texts at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import InvalidRequest
from shared.explainer import explain_texts
from shared.model import TextModel, load_text_model
from shared.schemas import ExplainOptions
from shared.settings import Settings

TEXTS = [
    "i loved this film , the acting was superb .",
    "one long string of cliches .",
    "it 's played in the most straight-faced fashion , with little humor to lighten things up .",
    "boring",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TextModel:
    return load_text_model(Settings(model_dir=str(tiny_model_dir), torch_threads=1))


def shap_reference(model: TextModel, text: str, options: ExplainOptions, batch_size: int, outputs=None):
    """SHAP's PartitionExplainer with the id-space Text masker, called as SHAP documents it."""
    import shap

    def f(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor(np.asarray(ids, dtype=np.int64))).logits.numpy()
        return model.outputs(logits, options.output)

    masker = shap.maskers.Text(model.tokenizer, output_type="token_ids")
    explainer = shap.Explainer(f, masker, algorithm="partition")
    np.random.seed(options.seed)
    result = explainer(
        [text], max_evals=options.max_evals, batch_size=batch_size, outputs=outputs, silent=True
    )
    return result.values[0], result.base_values[0]


def values_matrix(explanation) -> np.ndarray:
    return np.array([explanation.values[label] for label in explanation.labels]).T


@pytest.mark.parametrize("batch_size", [10, 64])
@pytest.mark.parametrize("max_evals", [40, 500])
@pytest.mark.parametrize("output", ["probability", "logit"])
def test_values_equal_shap(tiny: TextModel, batch_size: int, max_evals: int, output: str) -> None:
    options = ExplainOptions(max_evals=max_evals, output=output, seed=7)
    mine = explain_texts(tiny, TEXTS, options, batch_size)
    for text, explanation in zip(TEXTS, mine, strict=True):
        ref_values, ref_base = shap_reference(tiny, text, options, batch_size)
        assert values_matrix(explanation).shape == ref_values.shape
        np.testing.assert_allclose(values_matrix(explanation), ref_values, atol=1e-5, rtol=0)
        np.testing.assert_allclose(list(explanation.base_values.values()), ref_base, atol=1e-5, rtol=0)


def test_uncut_tree_equals_shap_whatever_the_batch_size(tiny: TextModel) -> None:
    options = ExplainOptions(max_evals=2000, seed=3)
    ref_values, _ = shap_reference(tiny, TEXTS[1], options, batch_size=10)
    for batch_size in (2, 16, 128):
        (mine,) = explain_texts(tiny, [TEXTS[1]], options, batch_size)
        np.testing.assert_allclose(values_matrix(mine), ref_values, atol=1e-5, rtol=0)


def test_label_subset_equals_shap_outputs(tiny: TextModel) -> None:
    options = ExplainOptions(max_evals=60, labels=["positive"], seed=1)
    (mine,) = explain_texts(tiny, [TEXTS[2]], options, 10)
    ref_values, _ = shap_reference(tiny, TEXTS[2], options, 10, outputs=np.array([2]))
    assert mine.labels == ["positive"]
    np.testing.assert_allclose(values_matrix(mine), ref_values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_additivity(tiny: TextModel, output: str) -> None:
    for explanation in explain_texts(tiny, TEXTS, ExplainOptions(max_evals=100, output=output), 32):
        for label in explanation.labels:
            total = explanation.base_values[label] + sum(explanation.values[label])
            assert abs(total - explanation.model_output[label]) < 1e-4


def test_model_output_matches_classification(tiny: TextModel) -> None:
    from shared.classifier import classify

    (explanation,) = explain_texts(tiny, [TEXTS[0]], ExplainOptions(), 32)
    (classification,) = classify(tiny, [TEXTS[0]], 8)
    for score in classification.scores:
        assert abs(explanation.model_output[score.label] - score.score) < 1e-5


def test_many_texts_together_equal_one_at_a_time(tiny: TextModel) -> None:
    options = ExplainOptions(max_evals=120, seed=5)
    together = explain_texts(tiny, TEXTS, options, 32)
    for text, joint in zip(TEXTS, together, strict=True):
        (alone,) = explain_texts(tiny, [text], options, 32)
        np.testing.assert_allclose(values_matrix(joint), values_matrix(alone), atol=1e-6)


def test_same_seed_same_numbers(tiny: TextModel) -> None:
    a = explain_texts(tiny, [TEXTS[2]], ExplainOptions(max_evals=30, seed=1), 4)[0]
    b = explain_texts(tiny, [TEXTS[2]], ExplainOptions(max_evals=30, seed=1), 4)[0]
    assert a.values == b.values


def test_tokens_and_offsets_point_into_the_text(tiny: TextModel) -> None:
    text = "I LOVED this film, the acting was superb."
    (explanation,) = explain_texts(tiny, [text], ExplainOptions(max_evals=50), 32)
    assert explanation.tokens[0] == "[CLS]" and explanation.tokens[-1] == "[SEP]"
    for token, (start, end) in zip(explanation.tokens[1:-1], explanation.offsets[1:-1], strict=True):
        assert text[start:end] == token
    assert "LOVED" in explanation.tokens


def test_predicted_and_unknown_labels(tiny: TextModel) -> None:
    (explanation,) = explain_texts(tiny, [TEXTS[0]], ExplainOptions(labels="predicted"), 32)
    top = max(explanation.model_output, key=explanation.model_output.get)
    assert explanation.labels == [top]
    with pytest.raises(InvalidRequest, match="unknown label"):
        explain_texts(tiny, [TEXTS[0]], ExplainOptions(labels=["nope"]), 32)


def test_truncated_text_is_explained_up_to_the_limit(tiny: TextModel) -> None:
    text = " ".join(["good film"] * 100)
    (explanation,) = explain_texts(tiny, [text], ExplainOptions(max_evals=50), 32)
    assert explanation.truncated is True
    assert len(explanation.tokens) == tiny.max_length


def test_explanation_stops_at_its_deadline(tiny: TextModel) -> None:
    import time

    from shared.errors import ExplanationTimeout
    from shared.explainer import explain_encoded

    with pytest.raises(ExplanationTimeout, match="request timeout"):
        explain_encoded(tiny, tiny.encode(TEXTS), ExplainOptions(max_evals=500), 8, deadline=time.monotonic())


def test_fast_precision_ranks_tokens_like_exact(sst2_dir: Path) -> None:
    """On a real model (a random tiny one has ~1e-5 attributions, all bf16 noise)."""
    from scipy.stats import spearmanr

    model = load_text_model(Settings(model_dir=str(sst2_dir)))
    texts = ["I loved this film, the acting was superb.", TEXTS[2]]
    options = ExplainOptions(max_evals=300)
    exact = explain_texts(model, texts, options, 64)
    fast = explain_texts(model, texts, options.model_copy(update={"precision": "fast"}), 64)
    for e, f in zip(exact, fast, strict=True):
        assert f.precision == "fast" and f.tokens == e.tokens
        label = max(e.model_output, key=e.model_output.get)
        assert spearmanr(e.values[label][1:-1], f.values[label][1:-1]).statistic > 0.9
        for name in f.labels:  # additivity holds in fast mode too
            assert abs(f.base_values[name] + sum(f.values[name]) - f.model_output[name]) < 1e-4
