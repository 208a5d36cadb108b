"""Command line: `python -m bench COMMAND [--smoke] [--out DIR] [options]` (COMMANDS lists them)."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "amortized": "distill the amortized explainer; amortized vs exact: time, Spearman, comprehensiveness",
    "analyses": "a dataset analysis (POST /analyses) on 1 worker and on 2: throughput, peak memory",
    "corpus": "the unlabelled corpus the amortized explainer's figures were distilled on (a text a line)",
    "budget": "anytime exact values: evaluations and comprehensiveness reached at 2, 5, 10 and 20 s",
    "devices": "the same explanations on the CPU and on a GPU: the largest difference per Owen batch size",
    "explain": "seed SHAP pipeline vs Clarion exact/fast vs SHAP reference, per text",
    "fast": 'precision "fast" on this CPU (int8 graph) vs exact: per-row speed, Spearman and top-5 overlap',
    "fusion": "exact graph fused by onnxruntime's transformer optimizer vs unfused: speed per row, logits",
    "families": "model families at base size: torch vs onnxruntime per row, seed vs exact, text masking",
    "faithfulness": "ERASER comprehensiveness/sufficiency: Clarion SHAP vs leave-one-out vs random rankings",
    "classify": "HTTP requests/s and latency at several concurrencies, micro-batching on and off",
    "coldstart": "seconds from process start to healthy /ping, and peak RSS of the service",
    "jobs": "explanation jobs on Redis + Celery: submit-to-succeeded latency and jobs/min by worker count",
    "recovery": "workers stopped as Kubernetes stops them (SIGTERM, SIGKILL): every job once, and how soon",
    "load": "the engine under load: classification latency while explaining, deadlines, shared passes",
    "passes": "forward-pass time and per-row cost by rows and length: what sizes the engine's passes",
    "readable": "granularity's evaluations and seconds; a 2,000-word document through windows, as a job",
    "soak": "mixed traffic for a bounded time: statuses, latency, RSS of every process, jobs finished",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--smoke", action="store_true", help="tiny and fast: check that it runs")
        sub.add_argument("--out", default=None, help="results directory (default bench/results/)")
        importlib.import_module(f"bench.{name}").add_arguments(sub)
    args = parser.parse_args(argv)
    return importlib.import_module(f"bench.{args.command}").main(args)


if __name__ == "__main__":
    sys.exit(main())
