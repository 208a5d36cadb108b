"""Faithfulness (ERASER comprehensiveness and sufficiency): the bins, the numbers against a direct
computation by deletion, windowed documents, and the deadline."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import ExplanationTimeout, JobCancelled
from shared.explanation.explainer import explain_texts
from shared.explanation.faithfulness import BINS, unit_counts
from shared.explanation.units import stripped_span
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import Engine, Ticket
from shared.runtime.model import TextModel
from tests.support import assert_close_to_scale

TEXTS = [
    "i loved this film , the acting was superb .",
    "it 's played in the most straight-faced fashion , with little humor to lighten things up .",
    "boring",
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    from tests.support import start_engine

    engine = start_engine(tiny_model_dir)
    yield engine
    engine.stop()


def test_bins_are_erasers_rounded_up() -> None:
    assert BINS == (0.01, 0.05, 0.10, 0.20, 0.50)
    assert unit_counts(1) == [1, 1, 1, 1, 1]
    assert unit_counts(10) == [1, 1, 1, 2, 5]
    assert unit_counts(200) == [2, 10, 20, 40, 100]
    assert unit_counts(0) == [0, 0, 0, 0, 0]


def direct(model: TextModel, text: str, explanation, label: str) -> tuple[float, float]:
    """The measures computed another way: units ranked from the response, each token assigned to the
    unit whose span holds its characters, the tokens deleted, the rows run one by one by torch."""
    enc = model.tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, special = np.array(enc["input_ids"]), np.array(enc["special_tokens_mask"], dtype=bool)
    spans = explanation.offsets
    unit_of = []
    for (start, end), is_special in zip(enc["offset_mapping"], special, strict=True):
        start, end = stripped_span(text, start, end)
        owner = [u for u, (s, e) in enumerate(spans) if not is_special and s <= start and end <= e and e > s]
        unit_of.append(owner[0] if owner else -1)
    unit_of = np.array(unit_of)
    index = model.labels.index(label)

    def score(kept: np.ndarray) -> float:
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor(ids[kept][None])).logits.numpy()
        return float(model.outputs(logits, "probability")[0, index])

    full = score(np.arange(len(ids)))
    ranked = np.argsort(-np.array(explanation.values[label]), kind="stable")
    comprehensive, sufficient = [], []
    for fraction in BINS:
        top = ranked[: max(1, int(np.ceil(fraction * len(spans))))]
        in_top = np.isin(unit_of, top)
        comprehensive.append(full - score(np.flatnonzero(~in_top)))
        sufficient.append(full - score(np.flatnonzero(in_top | (unit_of < 0))))
    return float(np.mean(comprehensive)), float(np.mean(sufficient))


@pytest.mark.parametrize("granularity", ["word", "sentence"])
def test_measures_equal_deleting_the_top_units(engine: Engine, granularity: str) -> None:
    options = ExplainOptions(max_evals=200, granularity=granularity, faithfulness=True)
    measured, computed = [], []
    for text, explanation in zip(TEXTS, explain_texts(engine, TEXTS, options), strict=True):
        assert explanation.faithfulness is not None
        assert set(explanation.faithfulness) == set(explanation.labels) == set(engine.model.labels)
        for label, measures in explanation.faithfulness.items():
            measured.append([measures.comprehensiveness, measures.sufficiency])
            computed.append(direct(engine.model, text, explanation, label))
    # Padded rows in shared passes against one row at a time: float32 noise (under 1e-6 of the
    # scale); deleting one wrong unit would move a measure by a percent of it or more.
    assert_close_to_scale(measured, computed, rel=1e-4)


def test_token_granularity_ranks_tokens_not_boundaries(engine: Engine) -> None:
    options = ExplainOptions(max_evals=200, labels="predicted", faithfulness=True)
    (explanation,) = explain_texts(engine, [TEXTS[0]], options)
    (label,) = explanation.labels
    # The same numbers as a word-free computation: each token its own unit ([CLS]/[SEP] kept).
    model = engine.model
    ids = model.encode([TEXTS[0]])[0].ids
    values = np.array(explanation.values[label])[1:-1]  # the boundary tokens are never deleted
    ranked = np.argsort(-values, kind="stable") + 1
    index = model.labels.index(label)

    def score(kept: np.ndarray) -> float:
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor(ids[kept][None])).logits.numpy()
        return float(model.outputs(logits, "probability")[0, index])

    full, inner = score(np.arange(len(ids))), len(ids) - 2
    comprehensive, sufficient = [], []
    for count in unit_counts(inner):
        top = ranked[:count]
        comprehensive.append(full - score(np.setdiff1d(np.arange(len(ids)), top)))
        sufficient.append(full - score(np.sort(np.concatenate([[0], top, [len(ids) - 1]]))))
    measured = explanation.faithfulness[label]
    assert_close_to_scale(
        [measured.comprehensiveness, measured.sufficiency],
        [np.mean(comprehensive), np.mean(sufficient)],
        rel=1e-4,
    )


def test_windowed_documents_are_measured_over_their_windows(engine: Engine) -> None:
    document = " ".join(TEXTS[:2]) * 12  # longer than the tiny model's maximum length
    options = ExplainOptions(max_evals=300, granularity="word", long_text="windows", faithfulness=True)
    (explanation,) = explain_texts(engine, [document], options)
    assert explanation.windows > 1 and explanation.faithfulness is not None
    for measured in explanation.faithfulness.values():
        assert np.isfinite([measured.comprehensiveness, measured.sufficiency]).all()
    without = explain_texts(engine, [document], options.model_copy(update={"faithfulness": False}))[0]
    assert without.faithfulness is None and without.values == explanation.values


def test_the_measures_run_within_the_ticket(engine: Engine) -> None:
    """The deletions are passes of the request like any other: its deadline or cancellation stops
    them (here the ticket is cancelled the moment the attributions are done)."""
    options = ExplainOptions(max_evals=100, faithfulness=True)
    ticket = Ticket(time.monotonic() + 600, progress=lambda done, total: done == total and ticket.cancel())
    with pytest.raises(JobCancelled):
        explain_texts(engine, TEXTS, options, ticket)
    assert ticket.progress is not None and ticket.progress[0] == ticket.progress[1]
    with pytest.raises(ExplanationTimeout, match="request timeout"):
        explain_texts(engine, TEXTS, options, Ticket(time.monotonic(), "past the request timeout"))


def test_any_ranking_is_measured_as_an_explanation_is(engine: Engine) -> None:
    """faithfulness_of scores given attributions (the benchmark's random and leave-one-out rankings)
    with the same deletions: SHAP's own values give the explanation's own numbers."""
    from shared.explanation.explainer import faithfulness_of, players_of

    options = ExplainOptions(max_evals=200, granularity="word", faithfulness=True)
    explanations = explain_texts(engine, TEXTS, options)
    labels = [[engine.model.labels.index(label) for label in e.labels] for e in explanations]
    values = [np.array([e.values[label] for label in e.labels]).T for e in explanations]
    assert players_of(engine, TEXTS, options) == [len(e.units) for e in explanations]
    measured = faithfulness_of(engine, TEXTS, options, values, labels)
    got, own = [], []
    for scored, explanation in zip(measured, explanations, strict=True):
        for label, measures in explanation.faithfulness.items():
            got.append([scored[label].comprehensiveness, scored[label].sufficiency])
            own.append([measures.comprehensiveness, measures.sufficiency])
    # The same deletions in other passes: equal up to float32 noise of the measures' scale.
    assert_close_to_scale(got, own, rel=1e-4)
    reversed_ranking = faithfulness_of(engine, TEXTS, options, [-v for v in values], labels)
    assert reversed_ranking != measured
