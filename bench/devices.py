"""`python -m bench devices`: the same explanations on the CPU and on a GPU (same numbers anywhere).

For each Owen batch size, short SST-2 sentences (whole trees) and long reviews (trees cut by
`max_evals`) are explained on both devices with `precision=exact`. It reports the largest difference
of any attribution or base value, whether both devices expanded the same tree (same evaluations), and
the seconds each took. The target is 1e-4. Without a GPU it compares the CPU with itself at another
pass size: the trees are the same and the numbers differ only by rounding (~1e-9, other kernels).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    median,
    quiet_transformers,
    sst2_sentences,
    table,
    timed,
    write_results,
)

TARGET = 1e-4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texts", type=int, default=10, help="short SST-2 dev sentences (the first N)")
    parser.add_argument("--long", type=int, default=2, help="long reviews of ~250-300 tokens")
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--batch-sizes", default="5,64", help="comma list of Owen batch sizes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the CPU side")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    import torch

    from bench.explain import _long_texts
    from shared.runtime.engine import PassLimits

    if args.smoke:
        args.texts, args.long, args.max_evals, args.batch_sizes = 2, 1, 64, "5"
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    cpu_engine = _engine(args.model_dir, "cpu", args.threads, None)
    # Without a GPU the other side is the CPU again, at a pass size no default uses.
    other = _engine(args.model_dir, "cuda", args.threads, None) if gpu else None
    other = other or _engine(args.model_dir, "cpu", args.threads, PassLimits(rows=7, tokens=300))
    other_name = torch.cuda.get_device_name(0) if gpu else "cpu, passes of 7 rows / 300 tokens"
    sentences = sst2_sentences()
    long_range = (50, 60) if args.smoke else (250, 300)
    samples = [("short", s) for s in sentences[: args.texts]]
    samples += [("long", t) for t in _long_texts(cpu_engine.model, sentences[100:], args.long, long_range)]

    rows: list[dict[str, Any]] = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",") if b.strip()):
        for engine in (cpu_engine, other):  # warm up: kernels, allocations
            _explain(engine, samples[0][1], 16, batch_size)
        for kind, text in samples:
            a, a_s = timed(lambda e=cpu_engine, t=text, b=batch_size: _explain(e, t, args.max_evals, b))
            b, b_s = timed(lambda e=other, t=text, b=batch_size: _explain(e, t, args.max_evals, b))
            rows.append(
                {
                    "batch_size": batch_size,
                    "kind": kind,
                    "tokens": len(a.units),
                    "evaluations": a.evaluations,
                    "same_evaluations": a.evaluations == b.evaluations,
                    "max_abs_diff": _max_abs_diff(a, b),
                    "cpu_s": a_s,
                    "other_s": b_s,
                }
            )
    cpu_engine.stop()
    other.stop()

    summary = _summarize(rows)
    worst = max(r["max_abs_diff"] for r in rows)
    verdict = f"largest difference {worst:.1e}: {'within' if worst <= TARGET else 'OVER'} {TARGET:.0e}"
    text = f"cpu vs {other_name}\n" + _table(summary) + "\n" + verdict
    data = {"config": vars(args) | {"other": other_name}, "environment": environment(), "rows": rows}
    write_results(Path(args.out or DEFAULT_OUT), "devices", data | {"summary": summary}, text)
    return 0


def _engine(model_dir: str, device: str, threads: int, limits: Any) -> Any:
    from shared.runtime.engine import Engine, pass_limits_for
    from shared.runtime.loading import load_text_model
    from shared.settings import Settings

    model = load_text_model(Settings(model_dir=model_dir, device=device, torch_threads=threads))
    return Engine(model, limits or pass_limits_for(model))


def _explain(engine: Any, text: str, max_evals: int, batch_size: int) -> Any:
    from shared.explanation.explainer import explain_texts
    from shared.io.schemas import ExplainOptions

    options = ExplainOptions(max_evals=max_evals, seed=0, precision="exact", batch_size=batch_size)
    return explain_texts(engine, [text], options)[0]


def _max_abs_diff(a: Any, b: Any) -> float:
    """Largest difference of any attribution or base value (inf when the two are not comparable)."""
    if a.units != b.units or a.labels != b.labels:
        return float("inf")
    values = max(float(np.max(np.abs(np.subtract(a.values[k], b.values[k])))) for k in a.labels)
    bases = max(abs(a.base_values[k] - b.base_values[k]) for k in a.labels)
    return max(values, bases)


def _summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["batch_size"], row["kind"]), []).append(row)
    return [
        {
            "batch_size": batch_size,
            "kind": kind,
            "texts": len(group),
            "median_tokens": median([r["tokens"] for r in group]),
            "same_trees": sum(r["same_evaluations"] for r in group),
            "max_abs_diff": max(r["max_abs_diff"] for r in group),
            "median_cpu_s": median([r["cpu_s"] for r in group]),
            "median_other_s": median([r["other_s"] for r in group]),
        }
        for (batch_size, kind), group in groups.items()
    ]


def _table(summary: list[dict[str, Any]]) -> str:
    headers = ["batch size", "kind", "texts", "tokens", "same trees", "max|diff|", "cpu s", "other s"]
    cells = [
        [
            str(s["batch_size"]),
            s["kind"],
            str(s["texts"]),
            fmt(s["median_tokens"], ".0f"),
            f"{s['same_trees']}/{s['texts']}",
            fmt(s["max_abs_diff"], ".1e"),
            fmt(s["median_cpu_s"]),
            fmt(s["median_other_s"]),
        ]
        for s in summary
    ]
    return table(headers, cells)
