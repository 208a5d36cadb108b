"""`python -m bench budget`: anytime exact values. One long review (~480 tokens) explained under time
budgets of 2, 5, 10 and 20 s and without one: the seconds each answer took, the evaluations it
reached, whether it completed, and the comprehensiveness of its ranking against the full run's."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    settled_service,
    sst2_sentences,
    table,
    write_results,
)
from bench.explain import _long_texts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budgets", default="2,5,10,20", help="seconds, comma-separated")
    parser.add_argument("--max-evals", type=int, default=20_000)
    parser.add_argument("--tokens", default="460,500", help="the review's length range, in tokens")
    parser.add_argument("--granularity", default="word")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    from shared.explanation.explainer import faithfulness_of
    from shared.io.schemas import ExplainOptions

    budgets = [float(b) for b in args.budgets.split(",")]
    low, high = (int(t) for t in args.tokens.split(","))
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        if args.smoke:
            budgets, args.max_evals, low, high = [0.2, 0.5], 2000, 40, 60
        service = settled_service(args.model_dir, Path(tmp), args.threads, args.smoke)
        model = service.model
        (review,) = _long_texts(model, sst2_sentences(), 1, (low, high))
        tokens = len(model.encode([review])[0].ids)
        options = ExplainOptions(max_evals=args.max_evals, granularity=args.granularity, labels="predicted")
        service.explain([review[:200]], options.model_copy(update={"max_evals": 60}))  # warm
        runs: list[dict[str, Any]] = []
        for budget in [*budgets, None]:
            started = time.perf_counter()
            (explanation,) = service.explain([review], options.model_copy(update={"time_budget": budget}))
            seconds = time.perf_counter() - started
            label = explanation.labels[0]
            values = np.array(explanation.values[label])[:, None]
            label_index = model.labels.index(label)
            (measures,) = faithfulness_of(service.engine, [review], options, [values], [[label_index]])
            runs.append(
                {
                    "budget_s": budget,
                    "seconds": seconds,
                    "evaluations": explanation.evaluations,
                    "complete": explanation.complete,
                    "comprehensiveness": measures[label].comprehensiveness,
                    "additivity_error": abs(
                        explanation.base_values[label]
                        + sum(explanation.values[label])
                        - explanation.model_output[label]
                    ),
                }
            )
            print(runs[-1], flush=True)
        service.stop()

    full = runs[-1]
    headers = [
        "time_budget",
        "answered in s",
        "evaluations",
        "complete",
        "comprehensiveness",
        "of the full run's",
    ]
    rows = [
        [
            "none (full run)" if r["budget_s"] is None else f"{r['budget_s']:g} s",
            fmt(r["seconds"], ".2f"),
            str(r["evaluations"]),
            "yes" if r["complete"] is not False else "no",
            fmt(r["comprehensiveness"], ".3f"),
            fmt(r["comprehensiveness"] / full["comprehensiveness"] * 100, ".0f", " %"),
        ]
        for r in runs
    ]
    text = (
        table(headers, rows)
        + f"\n\none review of {tokens} tokens, {args.granularity} granularity, max_evals {args.max_evals}, "
        f"the predicted label, {args.threads} threads, exact (onnxruntime fp32 once attached); "
        "comprehensiveness: ERASER AOPC of each answer's ranking, measured the same way for all"
    )
    data = {"config": vars(args), "environment": environment(), "tokens": tokens, "runs": runs}
    write_results(Path(args.out or DEFAULT_OUT), "budget", data, text)
    return 0
