"""`python -m bench passes`: one forward pass's time and per-row cost by rows and row length.

What the engine's pass size (PASS_TOKENS) is chosen from: the largest passes that stay under the
latency a waiting classification should bear (`--target-ms`), without losing per-row efficiency.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    best_time,
    environment,
    fmt,
    quiet_transformers,
    table,
    write_results,
)

ROWS = (1, 2, 4, 8, 16, 32, 64)
BUDGETS = (256, 512, 768, 1024, 1536, 2048)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lengths", default="24,64,128,270", help="row lengths in tokens")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="rows per pass (a GPU takes more)")
    parser.add_argument("--precision", default="exact", choices=("exact", "fast"))
    parser.add_argument("--max-tokens", type=int, default=8192, help="largest rows x length measured")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--target-ms", type=float, default=150.0, help="longest pass a classification waits")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    from shared.runtime.loading import load_text_model
    from shared.settings import Settings

    if args.smoke:
        args.lengths, args.max_tokens, args.repeats = "24,64", 512, 1
    model = load_text_model(Settings(model_dir=args.model_dir, torch_threads=args.threads))
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    row_counts = [int(x) for x in args.rows.split(",") if x.strip()]
    cells: list[dict[str, Any]] = []
    for length in lengths:
        row = model.encode(["word " * length])[0].ids[:length]
        for rows in row_counts:
            if rows > 1 and rows * length > args.max_tokens:
                break
            batch = [row] * rows
            model.forward(batch, args.precision)  # warm this shape
            seconds = best_time(lambda batch=batch: model.forward(batch, args.precision), args.repeats)
            cells.append(
                {"length": length, "rows": rows, "pass_ms": 1000 * seconds, "row_ms": 1000 * seconds / rows}
            )
            last = cells[-1]
            print(f"length {length} rows {rows}: {last['pass_ms']:.1f} ms/pass {last['row_ms']:.2f} ms/row")
    budgets = [_budget(cells, lengths, tokens) for tokens in BUDGETS]
    data = {"config": vars(args), "environment": environment(), "cells": cells, "budgets": budgets}
    report = _report(cells, budgets, lengths, row_counts, args.target_ms)
    write_results(Path(args.out or DEFAULT_OUT), "passes", data, report)
    return 0


def _budget(cells: list[dict[str, Any]], lengths: list[int], tokens: int) -> dict[str, Any]:
    """For a token budget: per length, the pass it allows, its time, and its per-row cost over the best."""
    per_length = {}
    for length in lengths:
        mine = [c for c in cells if c["length"] == length]
        best = min(c["row_ms"] for c in mine)
        allowed = [c for c in mine if c["rows"] == 1 or c["rows"] * length <= tokens]
        cell = max(allowed, key=lambda c: c["rows"])
        per_length[length] = {
            "rows": cell["rows"],
            "pass_ms": cell["pass_ms"],
            "over_best": cell["row_ms"] / best,
        }
    return {"tokens": tokens, "per_length": per_length}


def _report(cells, budgets, lengths, row_counts, target_ms) -> str:
    headers = ["length", *[f"{r} rows" for r in row_counts]]
    rows = []
    for length in lengths:
        by_rows = {c["rows"]: c for c in cells if c["length"] == length}
        rows.append(
            [str(length), *[fmt(by_rows[r]["row_ms"], ".3f") if r in by_rows else "-" for r in row_counts]]
        )
    lines = ["ms per row, by rows per pass:", table(headers, rows), ""]
    headers = ["PASS_TOKENS", *[f"len {n}: rows / pass ms / row cost vs best" for n in lengths]]
    rows = [
        [str(b["tokens"])]
        + [
            f"{p['rows']} / {p['pass_ms']:.0f} / {p['over_best']:.2f}x"
            for p in (b["per_length"][n] for n in lengths)
        ]
        for b in budgets
    ]
    lines += [f"what a token budget gives (target: passes under {target_ms:.0f} ms):", table(headers, rows)]
    return "\n".join(lines)
