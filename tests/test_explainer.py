"""The explainer: SHAP's own numbers (id-space Text masker), additivity, options, many texts at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import InvalidRequest
from shared.explanation.explainer import explain_texts
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import Engine
from shared.runtime.model import TextModel
from tests.support import assert_close_to_scale

TEXTS = [
    "i loved this film , the acting was superb .",
    "one long string of cliches .",
    "it 's played in the most straight-faced fashion , with little humor to lighten things up .",
    "boring",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    from tests.support import start_engine

    engine = start_engine(tiny_model_dir)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def tiny(engine: Engine) -> TextModel:
    return engine.model


def explain(engine: Engine, texts, options: ExplainOptions, batch_size: int | None = None):
    """Explain with SHAP's batch size `batch_size` (the option), default: the options' own."""
    if batch_size is not None:
        options = options.model_copy(update={"batch_size": batch_size})
    return explain_texts(engine, texts, options)


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


@pytest.fixture(scope="module")
def onnx_engine(tiny_model_dir: Path) -> Engine:
    from tests.support import start_engine

    engine = start_engine(tiny_model_dir, backend="onnxruntime")
    yield engine
    engine.stop()


@pytest.mark.parametrize("batch_size", [None, 1, 10, 64])  # None: the default, SHAP's own for text (5)
@pytest.mark.parametrize("max_evals", [40, 500])
@pytest.mark.parametrize("output", ["probability", "logit"])
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_values_equal_shap(
    request, tiny: TextModel, backend: str, batch_size: int | None, max_evals: int, output: str
) -> None:
    engine = request.getfixturevalue("engine" if backend == "torch" else "onnx_engine")
    assert engine.model.exact_backend == backend
    options = ExplainOptions(max_evals=max_evals, output=output, seed=7, batch_size=batch_size)
    assert options.batch_size == (batch_size or 5)
    mine = explain(engine, TEXTS, options)
    for text, explanation in zip(TEXTS, mine, strict=True):
        assert explanation.batch_size == options.batch_size
        ref_values, ref_base = shap_reference(tiny, text, options, options.batch_size)
        assert values_matrix(explanation).shape == ref_values.shape
        # Other passes than SHAP's (rows, padding, backend): float32 noise, measured at up to 8e-6
        # of the values' scale (a probability's noise over attributions ten times smaller than it).
        assert_close_to_scale(values_matrix(explanation), ref_values, rel=1e-4)
        assert_close_to_scale(list(explanation.base_values.values()), ref_base, rel=1e-4)


def test_default_batch_size_is_shaps_own_for_text() -> None:
    import shap

    assert ExplainOptions().batch_size == shap.maskers.Text(None).default_batch_size


def test_uncut_tree_equals_shap_whatever_the_batch_size(engine: Engine, tiny: TextModel) -> None:
    options = ExplainOptions(max_evals=2000, seed=3)
    ref_values, _ = shap_reference(tiny, TEXTS[1], options, batch_size=10)
    for batch_size in (2, 16, 128):
        (mine,) = explain(engine, [TEXTS[1]], options, batch_size)
        assert_close_to_scale(values_matrix(mine), ref_values, rel=1e-4)


def test_label_subset_equals_shap_outputs(engine: Engine, tiny: TextModel) -> None:
    options = ExplainOptions(max_evals=60, labels=["positive"], seed=1)
    (mine,) = explain(engine, [TEXTS[2]], options, 10)
    ref_values, _ = shap_reference(tiny, TEXTS[2], options, 10, outputs=np.array([2]))
    assert mine.labels == ["positive"]
    assert_close_to_scale(values_matrix(mine), ref_values, rel=1e-4)


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_additivity(engine: Engine, tiny: TextModel, output: str) -> None:
    for explanation in explain(engine, TEXTS, ExplainOptions(max_evals=100, output=output), 32):
        for label in explanation.labels:
            total = explanation.base_values[label] + sum(explanation.values[label])
            assert abs(total - explanation.model_output[label]) < 1e-4


def test_model_output_matches_classification(engine: Engine) -> None:
    from shared.serving.classifier import classify

    (explanation,) = explain(engine, [TEXTS[0]], ExplainOptions(), 32)
    (classification,) = classify(engine, [TEXTS[0]])
    for score in classification.prediction:
        assert abs(explanation.model_output[score.label] - score.score) < 1e-5


def test_many_texts_together_equal_one_at_a_time(engine: Engine, tiny: TextModel) -> None:
    options = ExplainOptions(max_evals=120, seed=5)
    together = explain(engine, TEXTS, options, 32)
    for text, joint in zip(TEXTS, together, strict=True):
        (alone,) = explain(engine, [text], options, 32)
        # Rows of other texts share the passes: another padding width, float32 noise of the scale.
        assert_close_to_scale(values_matrix(joint), values_matrix(alone), rel=1e-4)


def test_same_seed_same_numbers(engine: Engine, tiny: TextModel) -> None:
    a = explain(engine, [TEXTS[2]], ExplainOptions(max_evals=30, seed=1), 4)[0]
    b = explain(engine, [TEXTS[2]], ExplainOptions(max_evals=30, seed=1), 4)[0]
    assert a.values == b.values


def test_tokens_and_offsets_point_into_the_text(engine: Engine, tiny: TextModel) -> None:
    text = "I LOVED this film, the acting was superb."
    (explanation,) = explain(engine, [text], ExplainOptions(max_evals=50), 32)
    assert explanation.units[0] == "[CLS]" and explanation.units[-1] == "[SEP]"
    for token, (start, end) in zip(explanation.units[1:-1], explanation.offsets[1:-1], strict=True):
        assert text[start:end] == token
    assert "LOVED" in explanation.units


def test_predicted_and_unknown_labels(engine: Engine, tiny: TextModel) -> None:
    (explanation,) = explain(engine, [TEXTS[0]], ExplainOptions(labels="predicted"), 32)
    top = max(explanation.model_output, key=explanation.model_output.get)
    assert explanation.labels == [top]
    with pytest.raises(InvalidRequest, match="unknown label"):
        explain(engine, [TEXTS[0]], ExplainOptions(labels=["nope"]), 32)


def test_truncated_text_is_explained_up_to_the_limit(engine: Engine, tiny: TextModel) -> None:
    text = " ".join(["good film"] * 100)
    (explanation,) = explain(engine, [text], ExplainOptions(max_evals=50), 32)
    assert explanation.truncated is True
    assert len(explanation.units) == tiny.max_length


def test_explanation_stops_at_its_deadline(engine: Engine, tiny: TextModel) -> None:
    import time

    from shared.errors import ExplanationTimeout
    from shared.runtime.engine import Ticket

    ticket = Ticket(time.monotonic(), "past the request timeout")
    with pytest.raises(ExplanationTimeout, match="request timeout"):
        explain_texts(engine, TEXTS, ExplainOptions(max_evals=500), ticket)


def test_a_time_budget_gives_shaps_values_at_the_evaluations_reached(engine: Engine, tiny: TextModel) -> None:
    """Anytime values on a real model: stopped by its budget, the answer says so, adds up, and is
    SHAP's PartitionExplainer given max_evals = the evaluations reported."""
    text = " ".join(TEXTS + TEXTS[:2])  # 57 tokens (the tiny model reads 64): thousands of evaluations
    assert not tiny.encode([text])[0].truncated
    options = ExplainOptions(max_evals=20_000, seed=5, time_budget=0.15)
    (budgeted,) = explain(engine, [text], options)
    assert budgeted.complete is False and 2 < budgeted.evaluations < 20_000
    for label in budgeted.labels:
        total = budgeted.base_values[label] + sum(budgeted.values[label])
        assert total == pytest.approx(budgeted.model_output[label], abs=1e-6)
    reached = options.model_copy(update={"max_evals": budgeted.evaluations})
    ref_values, _ = shap_reference(tiny, text, reached, options.batch_size)
    assert_close_to_scale(values_matrix(budgeted), ref_values, rel=1e-5)
    (roomy,) = explain(engine, [TEXTS[1]], options.model_copy(update={"time_budget": 30.0}))
    assert roomy.complete is True  # a short text finishes well within it


@pytest.mark.parametrize("candidate", ["torch-half", "onnxruntime-int8"])
def test_fast_precision_ranks_tokens_like_exact(sst2_dir: Path, tmp_path: Path, candidate: str) -> None:
    """On a real model (a random tiny one ranks noise). Each path fast may take (bf16 where the device
    has it, the int8 graph) ranks tokens like exact, and its explanations stay additive."""
    from scipy.stats import spearmanr

    from shared.runtime.model import HalfPrecisionRunner
    from shared.runtime.onnx import onnx_exact, onnx_int8
    from tests.support import start_engine

    real = start_engine(sst2_dir, threads=None)
    if candidate == "torch-half":
        if not HalfPrecisionRunner.available(real.model):
            real.stop()
            pytest.skip("no half-precision path on this device")
        real.model.fast_runner = HalfPrecisionRunner(real.model)
    else:
        real.model.exact_runner = onnx_exact(real.model, tmp_path, 2)
        real.model.fast_runner = onnx_int8(real.model, real.model.exact_runner, 2)
    assert real.model.fast_backend == candidate
    texts = ["I loved this film, the acting was superb.", TEXTS[2]]
    options = ExplainOptions(max_evals=300)
    exact = explain(real, texts, options, 64)
    fast = explain(real, texts, options.model_copy(update={"precision": "fast"}), 64)
    for e, f in zip(exact, fast, strict=True):
        assert f.precision == "fast" and f.units == e.units
        label = max(e.model_output, key=e.model_output.get)
        # bf16 ranks at 0.99+, int8 at 0.97 median over SST-2 sentences (docs/engine.md); one text's
        # token ranking may dip below 0.9 on int8
        assert spearmanr(e.values[label][1:-1], f.values[label][1:-1]).statistic > 0.8
        assert not np.allclose(f.values[label], e.values[label], atol=1e-9)  # other passes than exact's
        for name in f.labels:  # additivity holds in fast mode too
            assert abs(f.base_values[name] + sum(f.values[name]) - f.model_output[name]) < 1e-4
    real.stop()


def run_owen(
    clustering, value_of, max_evals: int, batch_size: int, lookahead: int, spare: int = 0, stop=None
):
    """Drive the recursion with a deterministic model of the masks; count rows and yields."""
    from shared.explanation.owen import owen_values

    m = clustering.shape[0] + 1
    f00, f11 = value_of(np.zeros((1, m), dtype=bool))[0], value_of(np.ones((1, m), dtype=bool))[0]
    rng = np.random.RandomState(0)
    steps = owen_values(clustering, f00, f11, max_evals, batch_size, rng, lookahead, spare, stop)
    rows = yields = 0
    outputs = None
    try:
        while True:
            masks = steps.send(outputs)
            rows += len(masks)
            yields += 1
            outputs = value_of(masks)
    except StopIteration as done:
        values, evaluations, stopped = done.value
    return values, evaluations, rows, yields, stopped


def exact_game(tiny: TextModel):
    """A text's tree and a deterministic nonlinear "model" of which of its tokens are kept."""
    from shared.explanation.masking import token_segments
    from shared.explanation.owen import text_clustering

    encoded = tiny.encode([TEXTS[2]])[0]
    clustering = text_clustering(token_segments(encoded.text, encoded.offsets), "[SEP]")
    # Multiples of 1/1024: a row's sum of them is exact in any order, so each row's value is the same
    # bits whatever rows share its batch (BLAS sums a matrix product in an order that depends on
    # the batch's shape; a real model's passes are compared by scale elsewhere).
    weights = np.round(np.random.default_rng(1).normal(size=(clustering.shape[0] + 1, 2)) * 1024) / 1024

    def value_of(masks: np.ndarray) -> np.ndarray:
        return np.tanh(masks.astype(float) @ weights) ** 3

    return clustering, value_of


@pytest.mark.parametrize("rounds", [0, 1, 3, 10, 40])
@pytest.mark.parametrize("lookahead", [0, 32])
def test_a_walk_stopped_after_any_round_is_shaps_at_the_evaluations_reached(
    tiny: TextModel, rounds: int, lookahead: int
) -> None:
    """Anytime values: whenever the time budget ends the walk, the values are those of the walk
    given max_evals = the evaluations it reached, bit for bit."""
    clustering, value_of = exact_game(tiny)
    asked = iter(range(10**6))
    stopped = run_owen(clustering, value_of, 20_000, 5, lookahead, stop=lambda: next(asked) >= rounds)
    values, evaluations = stopped[0], stopped[1]
    assert stopped[4]  # it says it stopped early
    assert (evaluations == 2) == (rounds == 0)  # stopped before the first round: only the two ends
    budgeted = run_owen(clustering, value_of, evaluations, 5, lookahead=0)
    np.testing.assert_array_equal(values, budgeted[0])
    assert budgeted[1] == evaluations
    whole = run_owen(clustering, value_of, 20_000, 5, lookahead=0)
    assert evaluations < whole[1] and not whole[4]
    np.testing.assert_allclose(values.sum(axis=0), whole[0].sum(axis=0), rtol=1e-12, atol=1e-12)  # additive


@pytest.mark.parametrize("max_evals", [30, 120, 5000])
def test_lookahead_changes_the_passes_not_the_numbers(tiny: TextModel, max_evals: int) -> None:
    clustering, value_of = exact_game(tiny)

    plain = run_owen(clustering, value_of, max_evals, 5, lookahead=0)
    ahead = run_owen(clustering, value_of, max_evals, 5, lookahead=32)
    np.testing.assert_array_equal(ahead[0], plain[0])  # the same recursion, bit for bit
    assert ahead[1] == plain[1]  # and SHAP's count of evaluations
    assert ahead[3] < plain[3]  # in fewer, fuller batches
    assert plain[2] == plain[1] - 2
    assert ahead[2] <= plain[2] + 4 * 32  # on a cut tree, at most four batches of rows are wasted
    if max_evals == 5000:  # an uncut tree expands every node: looking ahead wastes nothing
        assert ahead[2] == plain[2]
    # A GPU may run rows past the budget (they cost it next to nothing): still the same numbers.
    spare = run_owen(clustering, value_of, max_evals, 5, lookahead=32, spare=64)
    np.testing.assert_array_equal(spare[0], plain[0])
    assert spare[1] == plain[1]
    assert spare[3] <= ahead[3]
    assert spare[2] <= plain[2] + 4 * 32  # the waste is still bounded by four batches
