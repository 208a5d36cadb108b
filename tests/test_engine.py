"""The engine: classification first, shared passes, pass limits, deadlines and cancellation at pass
boundaries, failures contained, and the same numbers whatever else is running."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from shared.errors import ExplanationTimeout, JobCancelled
from shared.explanation.explainer import explain_texts
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import CLASSIFY, EXPLAIN, Engine, PassLimits, Ticket
from shared.runtime.loading import load_text_model
from shared.runtime.model import TextModel
from shared.serving.classifier import classify
from shared.settings import Settings
from tests.support import assert_close_to_scale

TEXTS = ["good film", "the plot was boring", "i loved the acting", "awful", "not very good at all , really"]
LONG = "it 's played in the most straight faced fashion , with little humor to light things up ."


class SlowModel:
    """The real tiny model, with each pass slowed down so that work piles up behind it."""

    def __init__(self, model: TextModel, pass_s: float) -> None:
        self._model = model
        self.pass_s = pass_s
        self.fail_next = False

    def forward(self, rows, precision="exact"):
        time.sleep(self.pass_s)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return self._model.forward(rows, precision)

    def __getattr__(self, name):
        return getattr(self._model, name)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TextModel:
    return load_text_model(Settings(model_dir=str(tiny_model_dir), torch_threads=1))


class Recorder:
    """Keeps (priority, [(item seq, rows)]) of every pass, in order."""

    def __init__(self) -> None:
        self.passes: list[tuple[int, list[tuple[int, int]]]] = []
        self.lock = threading.Lock()

    def __call__(self, priority: int, items: list[tuple[int, int]]) -> None:
        with self.lock:
            self.passes.append((priority, items))


ROOMY = PassLimits(64, 4096)


def engine_for(model, limits=ROOMY, **kwargs) -> tuple[Engine, Recorder]:
    recorder = Recorder()
    return Engine(model, limits, observe_pass=recorder, **kwargs), recorder


def rows_of(model: TextModel, text: str, copies: int) -> list[np.ndarray]:
    return [model.encode([text])[0].ids] * copies


def test_logits_equal_a_direct_pass_and_come_back_in_order(tiny: TextModel) -> None:
    engine, _ = engine_for(tiny, PassLimits(rows=2, tokens=4096))
    rows = [e.ids for e in tiny.encode(TEXTS)]
    try:
        logits = engine.run(rows, CLASSIFY)
    finally:
        engine.stop()
    for row, got in zip(rows, logits, strict=True):
        np.testing.assert_allclose(got, tiny.forward([row])[0], atol=1e-5)


def test_classification_waits_at_most_for_the_pass_in_flight(tiny: TextModel) -> None:
    slow = SlowModel(tiny, pass_s=0.05)
    engine, recorder = engine_for(slow, PassLimits(rows=4, tokens=4096))
    try:
        # 40 explanation rows of one length: 10 passes of 4 rows are queued ahead
        backlog = engine.submit(rows_of(tiny, LONG, 40), EXPLAIN)
        time.sleep(0.07)  # the first explanation pass is running
        passes_before = len(recorder.passes)
        result = classify(engine, ["good film"])
        assert result[0].prediction
        classify_pass = next(i for i, (p, _) in enumerate(recorder.passes) if p == CLASSIFY)
        assert classify_pass <= passes_before  # it ran right after the pass that was in flight
        backlog.result(timeout=30)
        assert engine.stats.snapshot()["classify_max_wait_ms"] < 1000 * slow.pass_s * 3
    finally:
        engine.stop()


def test_rounds_of_concurrent_requests_share_passes(tiny: TextModel) -> None:
    slow = SlowModel(tiny, pass_s=0.02)
    engine, recorder = engine_for(slow, PassLimits(rows=64, tokens=4096))
    options = ExplainOptions(max_evals=60, batch_size=2)
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: explain_texts(engine, [TEXTS[4]], options), range(8)))
    finally:
        engine.stop()
    shared = [items for priority, items in recorder.passes if priority == EXPLAIN and len(items) > 1]
    assert shared, "no pass held rounds of more than one request"
    assert max(len(items) for items in shared) >= 4
    for result in results[1:]:
        for label, values in result[0].values.items():
            # Rounds of other requests in its passes: float32 noise of the values' scale.
            assert_close_to_scale(values, results[0][0].values[label], rel=1e-4)


def test_passes_respect_the_row_and_token_limits(tiny: TextModel) -> None:
    long_row = tiny.encode([LONG])[0].ids
    per_pass = 3
    engine, recorder = engine_for(tiny, PassLimits(rows=5, tokens=per_pass * len(long_row)))
    short_rows = [e.ids for e in tiny.encode(TEXTS)]
    try:
        engine.run([long_row] * 7, EXPLAIN)
        engine.run(short_rows * 3, CLASSIFY)
        engine.run([tiny.encode([" ".join([LONG] * 4)])[0].ids], EXPLAIN)  # over the budget alone
    finally:
        engine.stop()
    sizes = [sum(rows for _, rows in items) for _, items in recorder.passes]
    assert max(sizes) <= 5
    assert sizes[:3] == [3, 3, 1]
    for _, items in recorder.passes[3:-1]:  # classification rows: padded, within rows and tokens
        assert sum(rows for _, rows in items) <= 5
    assert sizes[-1] == 1
    assert engine.stats.rows == 7 + 15 + 1


def test_explanation_rows_of_different_lengths_never_share_a_pass(tiny: TextModel) -> None:
    engine, recorder = engine_for(SlowModel(tiny, 0.1))
    try:
        # A row of yet another length first, so that the three below queue up behind its pass.
        blocker = engine.submit(rows_of(tiny, "the plot was boring", 1), EXPLAIN)
        first = engine.submit(rows_of(tiny, "good film", 3), EXPLAIN)
        second = engine.submit(rows_of(tiny, TEXTS[4], 3), EXPLAIN)
        third = engine.submit(rows_of(tiny, "bad plot", 3), EXPLAIN)  # same length as the first
        for f in (blocker, first, second, third):
            f.result(timeout=10)
    finally:
        engine.stop()
    assert engine.stats.padding == 0
    assert any(len(items) == 2 for _, items in recorder.passes)  # first and third went together


def test_explanation_rows_of_several_lengths_come_back_in_order_unpadded(tiny: TextModel) -> None:
    """masking "text" re-tokenizes each masked text, so one round holds rows of several lengths: the
    engine runs each length in passes of its own and returns every row's logits in order."""
    engine, recorder = engine_for(tiny)
    rows = [e.ids for e in tiny.encode(["good film", TEXTS[4], "bad plot", "the plot was boring", "a"])]
    try:
        logits = engine.run(rows, EXPLAIN)
        with pytest.raises(ExplanationTimeout):
            engine.run(rows, EXPLAIN, ticket=Ticket(deadline=time.monotonic() - 1))
    finally:
        engine.stop()
    assert engine.stats.padding == 0
    assert len(recorder.passes) == len({len(r) for r in rows})  # one pass per length, nothing else
    for row, got in zip(rows, logits, strict=True):
        np.testing.assert_allclose(got, tiny.forward([row])[0], atol=1e-5)


def test_expired_work_is_dropped_within_one_pass(tiny: TextModel) -> None:
    slow = SlowModel(tiny, pass_s=0.1)
    engine, recorder = engine_for(slow, PassLimits(rows=2, tokens=4096))
    ticket = Ticket.within(0.25, "too slow")
    try:
        started = time.monotonic()
        with pytest.raises(ExplanationTimeout, match="too slow"):
            engine.run(rows_of(tiny, LONG, 40), EXPLAIN, ticket=ticket)  # 20 passes of 0.1 s
        told_after = time.monotonic() - started
        assert told_after < 0.25 + 0.05  # the waiter is told at the deadline, not after the pass
        time.sleep(0.3)
        assert len(recorder.passes) <= 4  # 0.25 s of 0.1 s passes, plus the one in flight
        assert engine.stats.dropped_items == 1 and engine.stats.dropped_rows >= 30
        assert classify(engine, ["good"])[0].prediction  # and the engine serves the next request
    finally:
        engine.stop()


def test_a_cancelled_ticket_stops_its_explanation_within_one_pass(tiny: TextModel) -> None:
    slow = SlowModel(tiny, pass_s=0.05)
    engine, recorder = engine_for(slow, PassLimits(rows=4, tokens=4096))
    flag = threading.Event()
    ticket = Ticket(cancelled_by=flag.is_set, poll_s=0.01)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            explain_texts(engine, [LONG, TEXTS[4]], ExplainOptions(max_evals=2000), ticket)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    try:
        thread.start()
        time.sleep(0.3)
        flag.set()
        cancelled_at = time.monotonic()
        thread.join(timeout=5)
        assert time.monotonic() - cancelled_at < 0.05 * 2 + 0.1
        assert len(errors) == 1 and isinstance(errors[0], JobCancelled)
        passes = len(recorder.passes)
        time.sleep(0.2)
        assert len(recorder.passes) <= passes + 1  # nothing ran for it after the pass in flight
    finally:
        engine.stop()


def test_a_failing_pass_fails_its_items_and_the_engine_keeps_serving(tiny: TextModel) -> None:
    slow = SlowModel(tiny, pass_s=0)
    engine, _ = engine_for(slow)
    try:
        slow.fail_next = True
        with pytest.raises(RuntimeError, match="boom"):
            classify(engine, ["good"])
        assert len(classify(engine, ["good", "bad"])) == 2
        assert engine.stats.failed_passes == 1
    finally:
        engine.stop()


def test_each_classification_request_alone_when_merging_is_off(tiny: TextModel) -> None:
    engine, recorder = engine_for(SlowModel(tiny, 0.02), merge_classifications=False)
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda t: classify(engine, [t]), TEXTS))
    finally:
        engine.stop()
    assert all(len(items) == 1 for _, items in recorder.passes)


def test_the_same_request_gives_the_same_numbers_alone_merged_and_at_another_pass_size(
    tiny: TextModel,
) -> None:
    """A cut tree (max_evals below the exact count): SHAP's batch size decides which nodes are
    expanded; the pass size and the other work in the engine must not change anything."""
    options = ExplainOptions(max_evals=30, seed=3)
    texts = [LONG, TEXTS[4]]
    alone_engine, _ = engine_for(tiny, PassLimits(rows=64, tokens=4096))
    small_engine, _ = engine_for(tiny, PassLimits(rows=3, tokens=40))
    busy_engine, recorder = engine_for(SlowModel(tiny, 0.005), PassLimits(rows=64, tokens=4096))
    try:
        alone = explain_texts(alone_engine, texts, options)
        small = explain_texts(small_engine, texts, options)
        others = [ExplainOptions(max_evals=m, seed=s) for m, s in [(40, 1), (200, 2), (30, 3)] * 3][:7]
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(explain_texts, busy_engine, texts if i % 2 else TEXTS, o)
                for i, o in enumerate(others)
            ]
            merged = pool.submit(explain_texts, busy_engine, texts, options).result()
            for f in futures:
                f.result()
    finally:
        for e in (alone_engine, small_engine, busy_engine):
            e.stop()
    assert any(len(items) > 1 for _, items in recorder.passes)  # it did share passes
    for a, s, m in zip(alone, small, merged, strict=True):
        assert a.evaluations == s.evaluations == m.evaluations < 200  # the tree was cut
        for label in a.labels:
            # Float summation order inside a pass depends on its other rows: float32 noise of the
            # values' scale only.
            assert_close_to_scale(a.values[label], s.values[label], rel=1e-4)
            assert_close_to_scale(a.values[label], m.values[label], rel=1e-4)


def test_under_overload_the_earliest_deadline_goes_first(tiny: TextModel) -> None:
    """Rounds are not shared out evenly until every request is late: the request that must answer
    first is served first (then first come, first served)."""
    slow = SlowModel(tiny, pass_s=0.05)
    engine, recorder = engine_for(slow, PassLimits(rows=2, tokens=4096))
    try:
        blocker = engine.submit(rows_of(tiny, "good film", 2), EXPLAIN)  # occupies the first pass
        time.sleep(0.02)
        late = engine.submit(rows_of(tiny, TEXTS[4], 4), EXPLAIN, ticket=Ticket.within(60, "late"))
        urgent = engine.submit(rows_of(tiny, LONG, 4), EXPLAIN, ticket=Ticket.within(5, "urgent"))
        for future in (blocker, late, urgent):
            future.result(timeout=10)
    finally:
        engine.stop()
    order = [seq for _, items in recorder.passes for seq, _ in items]
    late_seq, urgent_seq = 1, 2
    assert order.index(urgent_seq) < order.index(late_seq)
