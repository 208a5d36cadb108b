"""Documents longer than the model (long_text "windows"): the windows, the document's scores as the
mean of theirs, explanations of that mean (every window masked alike), and the memo of window rows."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from shared.errors import InvalidRequest
from shared.explanation.explainer import explain_texts, new_game
from shared.io.schemas import ExplainOptions, SeedBody, parse_model
from shared.runtime.encoding import WINDOW_OVERLAP, window_spans
from shared.runtime.engine import CPU_PASS, Engine
from shared.serving.classifier import classify
from shared.settings import Settings

# About 190 tokens for the tiny model (64 at most): four windows.
PARAGRAPHS = [
    "i loved this film , the acting was superb . " * 6,
    "one long string of cliches . it 's played in the most straight-faced fashion . " * 4,
    "boring . with little humor to light things up . " * 5,
]
DOCUMENT = "\n\n".join(p.strip() for p in PARAGRAPHS)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    from tests.support import start_engine

    engine = start_engine(tiny_model_dir)
    yield engine
    engine.stop()


def windowed(**values) -> ExplainOptions:
    return ExplainOptions(**({"long_text": "windows", "labels": "all", "granularity": "paragraph"} | values))


@pytest.mark.parametrize("content", [63, 100, 190, 1000, 5000])
def test_windows_are_full_overlap_and_cover_everything(content: int) -> None:
    spans = window_spans(content, 62, first=1)
    assert spans[0][0] == 1 and spans[-1][1] == content + 1
    assert all(end - start == 62 for start, end in spans)
    for (a, b), (c, _) in pairwise(spans):
        assert a < c < b and b - c >= int(62 * WINDOW_OVERLAP)  # overlap of at least a quarter
    assert window_spans(62, 62, first=1) == ()  # a text that fits is one row, as with truncate


def test_the_document_scores_are_the_mean_of_its_windows(engine: Engine) -> None:
    model = engine.model
    (encoded,) = model.encode([DOCUMENT], "windows")
    assert len(encoded.windows) >= 3 and not encoded.truncated
    rows = encoded.rows(encoded.ids)
    assert all(len(row) == model.max_length for row in rows)
    assert all(row[0] == encoded.ids[0] and row[-1] == encoded.ids[-1] for row in rows)  # [CLS] ... [SEP]
    expected = model.outputs(model.forward(rows), "probability").mean(axis=0)
    (result,) = classify(engine, [DOCUMENT], long_text="windows")
    scores = {entry.label: entry.score for entry in result.prediction}
    assert [scores[label] for label in model.labels] == pytest.approx(expected, abs=1e-6)
    (truncated,) = classify(engine, [DOCUMENT])
    assert truncated.truncated and not result.truncated


def test_masking_a_unit_masks_it_in_every_window(engine: Engine) -> None:
    model = engine.model
    (encoded,) = model.encode([DOCUMENT], "windows")
    game = new_game(model, encoded, windowed(granularity="sentence"))
    windows_of_unit = {}
    for u in range(game.players):
        tokens = set(np.flatnonzero(game.player_of_token == u))
        windows_of_unit[u] = [w for w, (a, b) in enumerate(encoded.windows) if tokens & set(range(a, b))]
    shared = next(u for u, ws in windows_of_unit.items() if len(ws) > 1)  # a sentence two windows hold
    mask = np.ones((1, game.players), dtype=bool)
    mask[0, shared] = False
    (document,) = game.masked_documents(mask, model)  # its rows, a window each
    tokens = np.flatnonzero(game.player_of_token == shared)
    for w in windows_of_unit[shared]:
        start, end = encoded.windows[w]
        row = document[w]
        inside = [t for t in tokens if start <= t < end]
        assert inside and all(row[encoded.prefix + t - start] == model.mask_token_id for t in inside)


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_explanations_of_the_mean_add_up(engine: Engine, output: str) -> None:
    (explanation,) = explain_texts(engine, [DOCUMENT], windowed(granularity="sentence", output=output))
    (classification,) = classify(engine, [DOCUMENT], long_text="windows")
    assert explanation.long_text == "windows" and explanation.windows >= 3
    for label in explanation.labels:
        total = explanation.base_values[label] + sum(explanation.values[label])
        assert total == pytest.approx(explanation.model_output[label], abs=1e-5)
    if output == "probability":
        scores = {entry.label: entry.score for entry in classification.prediction}
        assert explanation.model_output == pytest.approx(scores, abs=1e-6)
    assert explanation.units[-1].endswith("things up .")  # nothing cut: the last sentence is there


def test_three_paragraphs_get_their_owen_values(engine: Engine) -> None:
    """Exact Owen values of the windowed mean (the tree over three paragraphs is ((0, 1), 2)), from
    the 8 masked documents, each run here window by window and averaged by hand."""
    model = engine.model
    options = windowed(output="logit", max_evals=500, batch_size=64)
    (explanation,) = explain_texts(engine, [DOCUMENT], options)
    (encoded,) = model.encode([DOCUMENT], "windows")
    game = new_game(model, encoded, options)
    assert game.players == 3

    def value(kept: tuple[int, ...]) -> np.ndarray:
        mask = np.zeros((1, 3), dtype=bool)
        mask[0, list(kept)] = True
        (document,) = game.masked_documents(mask, model)  # its rows, a window each
        return model.outputs(model.forward(document), "logit").mean(axis=0)

    owen = _owen_three(value)
    for k, label in enumerate(model.labels):
        assert [explanation.values[label][p] for p in range(3)] == pytest.approx(owen[:, k], abs=1e-5)


def _owen_three(value) -> np.ndarray:
    """Owen values for players 0, 1, 2 under the coalition structure {{0, 1}, {2}}."""
    v = {s: value(s) for s in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]}
    # The union {0,1} against {2}: half with 2 absent, half with 2 present; inside, Shapley of 2.
    u01 = ((v[(0, 1)] - v[()]) + (v[(0, 1, 2)] - v[(2,)])) / 2
    p2 = ((v[(2,)] - v[()]) + (v[(0, 1, 2)] - v[(0, 1)])) / 2
    p0 = ((v[(0,)] - v[()]) + (v[(0, 1)] - v[(1,)]) + (v[(0, 2)] - v[(2,)]) + (v[(0, 1, 2)] - v[(1, 2)])) / 4
    p1 = u01 - p0
    return np.stack([p0, p1, p2])


def test_identical_window_rows_run_once(engine: Engine) -> None:
    (explanation,) = explain_texts(engine, [DOCUMENT], windowed(granularity="sentence", max_evals=300))
    rows_asked = explanation.windows_run + explanation.windows_memoised
    masks, spread = divmod(rows_asked, explanation.windows)
    assert spread == 0  # each mask's row is asked of every window
    # SHAP's evaluations, plus the rows a cut tree's lookahead ran in vain: at most four passes'
    # worth (tests/test_explainer.py), and how many depends on the model's values.
    assert explanation.evaluations <= masks <= explanation.evaluations + 4 * CPU_PASS.rows
    assert explanation.windows_memoised > explanation.windows_run  # most masks leave most windows alone


def test_options_and_limits(engine: Engine) -> None:
    with pytest.raises(ValueError, match="granularity"):
        ExplainOptions(long_text="windows")  # token granularity over windows: refused
    settings = Settings(max_text_chars=100, max_windowed_text_chars=5000)
    long = "good film . " * 50
    with pytest.raises(InvalidRequest, match='long_text "windows" takes up to 5000'):
        parse_model(SeedBody, {"data": long}, settings)
    body = parse_model(SeedBody, {"data": long, "long_text": "windows", "granularity": "word"}, settings)
    assert body.long_text == "windows"
    with pytest.raises(InvalidRequest, match="the limit is 5000"):
        parse_model(SeedBody, {"data": long * 10, "long_text": "windows", "granularity": "word"}, settings)
    from shared.serving.cache import classification_key, explanation_key

    assert classification_key("m", long) != classification_key("m", long, "windows")
    assert explanation_key("m", long, windowed()) != explanation_key(
        "m", long, windowed(long_text="truncate")
    )


def test_the_window_width_is_a_setting_and_part_of_the_cache_key(engine: Engine) -> None:
    model = engine.model
    wide = len(model.encode([DOCUMENT], "windows")[0].windows)
    identity = model.cache_identity
    saved = model.encoder
    try:
        model.encoder = replace(saved, window_tokens=32)  # WINDOW_TOKENS=32: more, narrower windows
        (narrow,) = model.encode([DOCUMENT], "windows")
        assert len(narrow.windows) > wide and all(e - s == 30 for s, e in narrow.windows)
        assert model.cache_identity != identity  # another width, other numbers: never served from cache
        (explanation,) = explain_texts(engine, [DOCUMENT], windowed(granularity="sentence", max_evals=100))
        assert explanation.window_tokens == 32 and explanation.windows == len(narrow.windows)
        model.encoder = replace(saved, window_tokens=10_000)  # capped by the model's maximum length
        assert model.window_width == model.max_length
    finally:
        model.encoder = saved


def test_threads_encoding_at_once_get_what_one_thread_gets(engine: Engine) -> None:
    """A fast tokenizer keeps its truncation setting in shared state and sets it on each call, so a
    windowed document (untruncated) encoded while another thread truncates came back truncated, its
    offsets wrong (found by the threads-pool job test: one word unit spanning 479 characters)."""
    import threading

    model = engine.model
    long_text = " ".join(f"word{i % 97} and more." for i in range(400))
    shorts = [f"a short text number {i}" for i in range(8)]
    whole = model.encode([long_text], "windows")[0]
    cut = model.encode(shorts)
    failures: list[str] = []

    def windows() -> None:
        for _ in range(40):
            if model.encode([long_text], "windows")[0].offsets != whole.offsets:
                failures.append("windows")

    def truncated() -> None:
        for _ in range(40):
            if [e.offsets for e in model.encode(shorts)] != [e.offsets for e in cut]:
                failures.append("truncate")

    threads = [threading.Thread(target=f) for f in (windows, truncated, windows, truncated)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
