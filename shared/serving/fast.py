"""What runs precision "fast": chosen by measuring, on the machine that serves, each candidate path
against exact's, for speed and for what it does to the explanations.

Machines differ (a CPU with bf16 and VNNI, one with AVX2 only, a GPU), and a fixed rule chose badly:
on a CPU with bf16, "bf16 if present" ran barely faster than exact end to end while the int8 graph
ran 1.75x faster per row. So every candidate the device has (torch in half precision where the
device has it, onnxruntime's int8 graph where exact runs on onnxruntime) is

- timed per row against exact's path on rows of two lengths (~24 tokens, and ~256 or the model's
  maximum), interleaved, medians of a few rounds;
- checked against exact on a few texts at word granularity: the median Spearman of the predicted
  label's values and the median overlap of their top 5 words. A path that reorders the top words is
  not fast, it is wrong.

"fast" then runs the fastest candidate that passes the check and is at least MIN_SPEEDUP times
exact's speed (the geometric mean of the two lengths' speed-ups), else exact's own path, and the
choice says why. FAST_BACKEND forces one (no measuring). The choice is made once per process, in
the background after the exact graph attaches; until then "fast" runs exact's passes, and nothing
"fast" is cached (ClarionService._computed_by). The choice is kept under MODEL_CACHE_DIR, named by
what it depends on (the model's fingerprint, exact's backend, the CPU's capability or the GPU, the
threads, the torch and onnxruntime versions): later processes of the same deployment reuse it
instead of measuring again (delete the file to measure afresh).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from shared.runtime.model import TextModel

log = logging.getLogger(__name__)

# The quality a candidate must keep against exact (medians over CHECK_TEXTS).
MIN_SPEARMAN = 0.9
MIN_TOP5_OVERLAP = 0.6
# Slower than this against exact's path, a candidate is not worth its rounding.
MIN_SPEEDUP = 1.1
SHORT_TOKENS, LONG_TOKENS = 24, 256
ROUNDS = 5

# Texts the check explains with exact and with each candidate: reviews of a few lengths, with words
# whose sign and weight differ, so that a ranking carries information on any classifier.
CHECK_TEXTS = (
    "The acting was superb and the story moved me, although the ending felt a little rushed.",
    "A dull, lifeless plot with wooden dialogue; I nearly walked out before the second act.",
    "Not bad at all: the cast is charming, the jokes mostly land, and the music is wonderful.",
    "It starts strong, with a tense and beautifully shot opening, but the middle drags badly, the "
    "villain is a cartoon, and by the final chase I had stopped caring about anyone on the screen. "
    "Still, the lead gives a warm, patient performance that almost saves it.",
)


@dataclass
class Candidate:
    """One path "fast" could take, and what was measured of it."""

    name: str
    runner: Any  # (ids, attention) -> logits, with `name` and `max_width`
    speedup_short: float | None = None  # exact's ms per row / its ms per row, ~24-token rows
    speedup_long: float | None = None  # the same on the long rows
    spearman: float | None = None  # median over the check texts
    top5_overlap: float | None = None
    passed: bool = False
    why_not: str | None = None

    @property
    def speedup(self) -> float | None:
        """The geometric mean of the two lengths' speed-ups."""
        if self.speedup_short is None or self.speedup_long is None:
            return None
        return math.sqrt(self.speedup_short * self.speedup_long)

    def report(self) -> dict[str, Any]:
        return {
            "speedup_short": _rounded(self.speedup_short),
            "speedup_long": _rounded(self.speedup_long),
            "spearman": _rounded(self.spearman),
            "top5_overlap": _rounded(self.top5_overlap),
            "passed": self.passed,
            **({"why_not": self.why_not} if self.why_not else {}),
        }


@dataclass
class FastChoice:
    """What "fast" runs, and why: /ping shows it."""

    status: str  # "measuring", "chosen", "forced"
    chosen: str | None = None  # a candidate's name, or "exact" (exact's own path)
    reason: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float | None = None  # how long measuring took
    cached: bool = False  # read from an earlier process's measurement

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, **({"cached": True} if self.cached else {})}
        if self.chosen is not None:
            out["chosen"] = self.chosen
        if self.reason is not None:
            out["reason"] = self.reason
        if self.candidates:
            out["candidates"] = {c.name: c.report() for c in self.candidates}
        if self.seconds is not None:
            out["seconds"] = round(self.seconds, 2)
        return out


def choose(
    model: TextModel,
    candidates: Sequence[Candidate],
    explain: Callable[[TextModel, Sequence[str], str], list[Any]],
    rounds: int = ROUNDS,
) -> FastChoice:
    """Measure every candidate against exact's path and pick one (see the module docstring).
    `explain(model, texts, precision)` explains the texts with that model's passes (the caller's
    engine): the check's reference is exact, each candidate runs as the model's fast runner."""
    started = time.perf_counter()
    candidates = list(candidates)
    if not candidates:
        return FastChoice("chosen", "exact", "no candidate on this device: fast runs exact's path")
    _time(model, candidates, rounds)
    reference = explain(model, CHECK_TEXTS, "exact")
    for candidate in candidates:
        _check(model, candidate, reference, explain)
    passing = [c for c in candidates if c.passed]
    best = max(passing, key=lambda c: c.speedup or 0.0, default=None)
    seconds = time.perf_counter() - started
    if best is None:
        reasons = "; ".join(f"{c.name}: {c.why_not}" for c in candidates)
        return FastChoice("chosen", "exact", f"no candidate passed ({reasons}): fast runs exact's path",
                          candidates, seconds)  # fmt: skip
    return FastChoice(
        "chosen",
        best.name,
        f"{best.name} is the fastest that passed: {best.speedup:.2f}x exact per row "
        f"(~{SHORT_TOKENS} tokens {best.speedup_short:.2f}x, long rows {best.speedup_long:.2f}x), "
        f"Spearman {best.spearman:.3f}, top-5 overlap {best.top5_overlap:.2f}",
        candidates,
        seconds,
    )


def choice_path(model: TextModel, cache_dir: str | Path, threads: int) -> Path:
    """Where this deployment's choice is kept: named by everything the measurement depends on."""
    import torch

    try:
        import onnxruntime

        versions = f"torch{torch.__version__}-ort{onnxruntime.__version__}"
    except ImportError:
        versions = f"torch{torch.__version__}"
    if model.device.type == "cuda":
        device = torch.cuda.get_device_name(model.device).replace(" ", "_")
    else:
        device = f"cpu-{torch.backends.cpu.get_cpu_capability()}"
    name = f"{model.fingerprint}-{model.exact_backend}-{device}-t{threads}-{versions}.json"
    return Path(cache_dir) / "fast" / name.replace("+", "_").replace("/", "_")


def saved_choice(path: Path, candidates: Sequence[Candidate]) -> FastChoice | None:
    """The choice an earlier process measured here, if it names a path this process has."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    names = {c.name: c for c in candidates}
    chosen = saved.get("chosen")
    if chosen != "exact" and chosen not in names:
        return None
    restored = []
    for name, measured in saved.get("candidates", {}).items():
        if name in names:
            candidate = names[name]
            candidate.speedup_short = measured.get("speedup_short")
            candidate.speedup_long = measured.get("speedup_long")
            candidate.spearman, candidate.top5_overlap = (
                measured.get("spearman"),
                measured.get("top5_overlap"),
            )
            candidate.passed, candidate.why_not = bool(measured.get("passed")), measured.get("why_not")
            restored.append(candidate)
    return FastChoice("chosen", chosen, saved.get("reason"), restored, saved.get("seconds"), cached=True)


def save_choice(path: Path, choice: FastChoice) -> None:
    """Keep a measured choice for later processes (best effort: an unwritable cache measures again)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(choice.report(), out)
        os.replace(partial, path)
    except OSError as exc:
        log.warning("fast: the choice was not kept (%s); the next process measures again", exc)


def _time(model: TextModel, candidates: list[Candidate], rounds: int) -> None:
    """ms per row of each candidate and of exact's path, interleaved, rotating who goes first."""
    shapes = {"short": _rows(model, SHORT_TOKENS, 32), "long": _rows(model, LONG_TOKENS, 4)}
    runners: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "exact": lambda ids, attention: _exact_pass(model, ids, attention)
    }
    runners.update({c.name: c.runner for c in candidates})
    for shape, (ids, attention) in shapes.items():
        times: dict[str, list[float]] = {name: [] for name in runners}
        for run in runners.values():  # warm: a half-precision copy, a session's first pass
            with model.lock:
                run(ids, attention)
        names = list(runners)
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                with model.lock:  # the engine's passes wait; none runs beside a timed one
                    began = time.perf_counter()
                    runners[name](ids, attention)
                    times[name].append((time.perf_counter() - began) / len(ids))
        exact_ms = statistics.median(times["exact"])
        for candidate in candidates:
            speedup = exact_ms / statistics.median(times[candidate.name])
            if shape == "short":
                candidate.speedup_short = speedup
            else:
                candidate.speedup_long = speedup


def _exact_pass(model: TextModel, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
    runner = model.exact_runner
    if runner is not None and ids.shape[1] <= runner.max_width:
        return runner(ids, attention)
    return model.torch_forward(ids, attention)


def _rows(model: TextModel, tokens: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` rows of `tokens` tokens (at most the model's maximum): the check texts' ids, repeated."""
    width = min(tokens, model.max_length)
    (encoded,) = model.encode([" ".join(CHECK_TEXTS * 8)])
    ids = encoded.ids
    row = np.concatenate([ids[: width - model.keep_suffix], ids[len(ids) - model.keep_suffix :]])
    return model.padded([row] * count)


def _check(
    model: TextModel,
    candidate: Candidate,
    reference: list[Any],
    explain: Callable[[TextModel, Sequence[str], str], list[Any]],
) -> None:
    from shared.analysis.agreement import ranking_agreement

    trying = replace(model, fast_runner=candidate.runner)  # the same weights, lock and encoder
    results = explain(trying, CHECK_TEXTS, "fast")
    spearman, overlap = [], []
    for exact, fast in zip(reference, results, strict=True):
        label = max(exact.model_output, key=exact.model_output.get)
        rank, top = ranking_agreement(exact.values[label], fast.values[label])
        if rank is not None and not math.isnan(rank):
            spearman.append(rank)
        overlap.append(top)
    candidate.spearman = statistics.median(spearman) if spearman else None
    candidate.top5_overlap = statistics.median(overlap)
    speedup = candidate.speedup or 0.0
    if candidate.spearman is None or candidate.spearman < MIN_SPEARMAN:
        candidate.why_not = f"Spearman {_shown(candidate.spearman)} < {MIN_SPEARMAN}"
    elif candidate.top5_overlap < MIN_TOP5_OVERLAP:
        candidate.why_not = f"top-5 overlap {candidate.top5_overlap:.2f} < {MIN_TOP5_OVERLAP}"
    elif speedup < MIN_SPEEDUP:
        candidate.why_not = f"{speedup:.2f}x exact per row < {MIN_SPEEDUP}x"
    else:
        candidate.passed = True


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
