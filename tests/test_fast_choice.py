"""precision "fast" is chosen by measuring where it runs: each candidate's speed against exact's path
and its explanations against exact's (shared/serving/fast.py)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import shared.runtime.model
from shared.explanation.explainer import explain_encoded
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import Engine, pass_limits_for
from shared.runtime.model import TextModel
from shared.serving.fast import MIN_SPEARMAN, MIN_SPEEDUP, Candidate, choose
from shared.serving.service import ClarionService
from shared.settings import Settings


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TextModel:
    from tests.support import start_engine

    engine = start_engine(tiny_model_dir)
    yield engine.model
    engine.stop()


def explain_with(model: TextModel, texts, precision: str):
    engine = Engine(model, pass_limits_for(model))
    try:
        options = ExplainOptions(max_evals=200, granularity="word", labels="all", precision=precision)
        return explain_encoded(engine, model.encode(texts), options)
    finally:
        engine.stop()


class Slowed:
    """A runner that computes exact's numbers, `seconds` slower per pass."""

    max_width = 1 << 30

    def __init__(self, model: TextModel, seconds: float, name: str = "slowed") -> None:
        self.model, self.seconds, self.name = model, seconds, name

    def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return self.model.torch_forward(ids, attention)


class Shuffled:
    """A fast but wrong path: each row's logits are those of the row with its tokens reversed."""

    name, max_width = "shuffled", 1 << 30

    def __init__(self, model: TextModel) -> None:
        self.model = model

    def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        flipped = ids.copy()
        for row, mask in zip(flipped, attention, strict=True):
            real = int(mask.sum())
            row[1 : real - 1] = row[1 : real - 1][::-1]
        return self.model.torch_forward(flipped, attention)


def test_the_fastest_candidate_that_keeps_exacts_ranking_is_chosen(tiny: TextModel) -> None:
    """Exact's path is slowed: a candidate computing the same numbers at full speed is faster and
    ranks like exact; a wrong one is faster still but reorders the words; a slow one loses."""
    good = Candidate("good", Slowed(tiny, 0.0, "good"))
    wrong = Candidate("wrong", Shuffled(tiny))
    slow = Candidate("slow", Slowed(tiny, 0.03, "slow"))
    tiny.exact_runner = Slowed(tiny, 0.01, "onnxruntime")
    try:
        choice = choose(tiny, [good, wrong, slow], explain_with, rounds=3)
    finally:
        tiny.exact_runner = None
    assert choice.chosen == "good", choice.report()
    assert good.passed and good.speedup > MIN_SPEEDUP and good.spearman == pytest.approx(1.0)
    assert not wrong.passed and wrong.spearman < MIN_SPEARMAN and "Spearman" in wrong.why_not
    assert not slow.passed and slow.speedup < 1 and "exact per row" in slow.why_not
    report = choice.report()
    assert report["status"] == "chosen" and set(report["candidates"]) == {"good", "wrong", "slow"}
    assert "fastest that passed" in report["reason"]


def test_with_no_candidate_that_passes_fast_runs_exacts_path_and_says_why(tiny: TextModel) -> None:
    wrong = Candidate("wrong", Shuffled(tiny))
    choice = choose(tiny, [wrong], explain_with, rounds=2)
    assert choice.chosen == "exact"
    assert "no candidate passed" in choice.reason and "wrong: Spearman" in choice.reason


def wait_chosen(service: ClarionService, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while service.status().fast["status"] == "measuring":
        assert time.monotonic() < deadline, "fast was never chosen"
        time.sleep(0.1)
    return service.status().fast


def test_the_service_measures_its_candidates_and_ping_shows_them(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(
        model_dir=str(tiny_model_dir), torch_threads=1, serverless=True, model_cache_dir=str(tmp_path)
    )
    service = ClarionService(settings, threads=1)
    service.load()
    try:
        fast = wait_chosen(service)
        model = service.model
        expected = {"onnxruntime-int8"} | ({"torch-half"} if shared.runtime.model._cpu_has_bf16() else set())
        assert set(fast["candidates"]) == expected
        for measured in fast["candidates"].values():
            assert measured["speedup_short"] > 0 and measured["speedup_long"] > 0
            assert -1 <= measured["spearman"] <= 1 and 0 <= measured["top5_overlap"] <= 1
        passed = {name: m for name, m in fast["candidates"].items() if m["passed"]}
        if passed:  # the fastest of those that passed (geometric mean of the two lengths)
            best = max(passed, key=lambda n: passed[n]["speedup_short"] * passed[n]["speedup_long"])
            assert fast["chosen"] == best == service.status().fast_backend
        else:
            assert fast["chosen"] == "exact" and service.status().fast_backend == model.exact_backend
        options = ExplainOptions(max_evals=60, precision="fast")
        first = service.explain(["a settled choice is cached"], options)[0]
        assert service.explain(["a settled choice is cached"], options)[0] is first
    finally:
        service.stop()
    # The next process of the deployment reads the choice instead of measuring again.
    again = ClarionService(settings, threads=1)
    again.load()
    try:
        kept = wait_chosen(again)
        assert kept.pop("cached") is True and kept == fast
        assert again.status().fast_backend == service.status().fast_backend
    finally:
        again.stop()


@pytest.mark.parametrize(
    ("forced", "bf16", "chosen", "reason"),
    [
        ("exact", True, "exact", "FAST_BACKEND=exact"),
        ("onnxruntime-int8", True, "onnxruntime-int8", "FAST_BACKEND=onnxruntime-int8"),
        ("torch-half", False, "exact", "not available here"),
    ],
)
def test_fast_backend_forces_a_candidate(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forced, bf16, chosen, reason
) -> None:
    monkeypatch.setattr(shared.runtime.model, "_cpu_has_bf16", lambda: bf16)
    settings = Settings(
        model_dir=str(tiny_model_dir),
        torch_threads=1,
        serverless=True,
        model_cache_dir=str(tmp_path),
        fast_backend=forced,
    )
    service = ClarionService(settings, threads=1)
    service.load()
    try:
        fast = wait_chosen(service)
        assert fast["status"] == "forced" and fast["chosen"] == chosen and reason in fast["reason"]
        assert "candidates" not in fast  # nothing measured
        backend = service.status().fast_backend
        assert backend == (chosen if chosen != "exact" else service.model.exact_backend)
        if forced == "exact":  # no candidate is wanted, so none is built: no int8 graph on disk
            assert not list(tmp_path.rglob("*-int8-*.onnx"))
    finally:
        service.stop()


def test_clarion_explain_in_process_measures_fast_only_for_a_fast_run(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clarion explain` (and distill's labelling) without precision "fast" runs its service with
    fast on exact's path: no candidate measured beside the run; with "fast" it measures as a server."""
    import shared.serving.service
    from shared.cli.explain import in_process

    made: list[ClarionService] = []

    class Recorded(ClarionService):
        def __init__(self, settings: Settings, **kwargs) -> None:
            super().__init__(settings, **kwargs)
            made.append(self)

    monkeypatch.setattr(shared.serving.service, "ClarionService", Recorded)
    settings = Settings(
        model_dir=str(tiny_model_dir), torch_threads=1, serverless=True, model_cache_dir=str(tmp_path)
    )
    try:
        for precision in ("exact", "fast"):
            (result,) = in_process({"precision": precision, "max_evals": 16}, settings)(
                ["a fine, moving film"]
            )
            assert result["explanation"]
        assert [service.settings.fast_backend for service in made] == ["exact", "auto"]
        assert wait_chosen(made[0])["reason"] == "FAST_BACKEND=exact"
    finally:
        for service in made:
            service.stop()
