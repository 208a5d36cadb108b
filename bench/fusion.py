"""`python -m bench fusion`: the exact graph fused by onnxruntime's transformer optimizer against the
unfused export (shared/runtime/fusion.py): the fused operators, the largest logit difference, per-row
speed at ~24 and ~256 tokens (interleaved rounds, medians), and what fusing adds to a start."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import DEFAULT_OUT, MINILM_DIR, environment, fmt, ratio, table, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    from shared.runtime.fusion import per_row_ms, timed_passes
    from shared.runtime.loading import load_text_model
    from shared.runtime.onnx import onnx_exact
    from shared.settings import Settings

    if args.smoke:
        args.rounds = 2
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        model_dir = args.model_dir
        if args.smoke:
            from tests.support import build_tiny_model

            model_dir = str(build_tiny_model(Path(tmp) / "tiny", labels=["negative", "positive"]))
        model = load_text_model(Settings(model_dir=model_dir, torch_threads=args.threads))
        cache = Path(tmp) / "cache"
        start = {}
        for moment, fusion in (("export", "off"), ("cached", "off"), ("first fused", "on"), ("fused", "on")):
            started = time.perf_counter()
            runner = onnx_exact(model, cache, args.threads, fusion=fusion)
            start[moment] = time.perf_counter() - started
        unfused = onnx_exact(model, cache, args.threads, fusion="off")
        fused = runner if runner.fused else None
        passes = timed_passes(model, min(model.max_length, unfused.max_width), ((32, 24), (2, 256)))
        logits = {shape: unfused(*rows) for shape, rows in passes.items()}
        scale = max(float(np.abs(x).max()) for x in logits.values())
        difference = (
            max(float(np.abs(fused(*rows) - logits[shape]).max()) for shape, rows in passes.items())
            if fused
            else None
        )
        runners = {"unfused": unfused, **({"fused": fused} if fused else {})}
        ms = per_row_ms(runners, passes, args.rounds, repeats=3)

    rows = [
        [
            shape,
            fmt(ms["unfused"][shape], ".3f"),
            fmt(ms["fused"][shape] if fused else None, ".3f"),
            fmt(ratio(ms["unfused"][shape], ms["fused"][shape]) if fused else None, ".3f", "x"),
        ]
        for shape in passes
    ]
    operators = ", ".join(f"{op} {n}" for op, n in (fused.fused if fused else {}).items()) or "none"
    text = (
        table(["rows x tokens", "unfused ms/row", "fused ms/row", "fused speed-up"], rows)
        + f"\n\nfused operators: {operators}\n"
        + f"largest |fused - unfused| logit: {fmt(difference, '.1e')} (largest |logit| {scale:.2f})\n"
        + f"onnx_exact at start: export and check {start['export']:.1f} s; the export cached "
        f"{start['cached']:.1f} s; the fused graph made, checked and timed (export cached) "
        f"{start['first fused']:.1f} s; both cached, the fused graph run {start['fused']:.1f} s\n"
        + f"per row: medians of {args.rounds} interleaved rounds of 3 passes after an untimed one, "
        f"{args.threads} threads"
    )
    data = {
        "config": vars(args),
        "environment": environment(),
        "per_row_ms": ms,
        "operators": fused.fused if fused else None,
        "max_logit_difference": difference,
        "logit_scale": scale,
        "start_s": start,
    }
    write_results(Path(args.out or DEFAULT_OUT), "fusion", data, text)
    return 0
