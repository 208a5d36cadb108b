"""`python -m bench fast`: precision "fast" as the service chooses it on this machine. Each
candidate (torch in half precision where the device has it, the int8 graph) against exact's path:
what the service measured at start and chose, per-row speed at 24 and 270 tokens, interleaved, and
explanations end to end (the service's own path) on SST-2 sentences and on reviews, with how each
ranks units against exact (Spearman, top-5 overlap)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    median,
    ratio,
    settled_service,
    sst2_sentences,
    table,
    write_results,
)
from bench.explain import _long_texts

EXACT = "exact"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texts", type=int, default=40, help="SST-2 dev sentences")
    parser.add_argument("--long", type=int, default=4, help="reviews of ~250-300 tokens")
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--granularity", default="word")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:

    if args.smoke:
        args.texts, args.long, args.max_evals, args.rounds = 3, 1, 60, 2
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        service = settled_service(args.model_dir, Path(tmp), args.threads, args.smoke)
        choice = service.fast_choice
        model = service.model
        paths = {c.name: c.runner for c in choice.candidates}
        sentences = sst2_sentences()
        texts = sentences[: args.texts]
        reviews = _long_texts(model, sentences[args.texts :], args.long, (250, 300)) if args.long else []
        speed = _per_row(model, paths, sentences, args.rounds)
        quality = {
            "sentences": _quality(service, paths, texts, args),
            **({"reviews": _quality(service, paths, reviews, args)} if reviews else {}),
        }
        service.stop()

    names = list(paths)
    measured = [
        [
            c.name,
            fmt(c.speedup_short, ".2f", "x"),
            fmt(c.speedup_long, ".2f", "x"),
            fmt(c.spearman, ".3f"),
            fmt(c.top5_overlap, ".2f"),
            "chosen" if c.name == choice.chosen else (c.why_not or "passed"),
        ]
        for c in choice.candidates
    ]
    per_row = [
        [s["shape"], fmt(s["ms_per_row"][EXACT], ".3f")]
        + [f"{fmt(s['ms_per_row'][n], '.3f')} ({fmt(s['speedup'][n], '.2f', 'x')})" for n in names]
        for s in speed
    ]
    end_to_end = [
        [
            f"{kind}/{name}",
            str(q["texts"]),
            fmt(q["exact_s_per_text"], ".3f"),
            fmt(q["paths"][name]["s_per_text"], ".3f"),
            fmt(ratio(q["exact_s_per_text"], q["paths"][name]["s_per_text"]), ".2f", "x"),
            fmt(q["paths"][name]["spearman_median"], ".3f"),
            fmt(q["paths"][name]["top5_overlap_median"], ".2f"),
        ]
        for kind, q in quality.items()
        for name in names
    ]
    text = (
        f"chosen at start: {choice.chosen} ({choice.reason}; measured in {fmt(choice.seconds, '.1f')} s)\n\n"
        + table(["candidate", "speed-up ~24 tok", "speed-up long", "Spearman", "top-5", "verdict"], measured)
        + "\n\n"
        + table(["rows x tokens", "exact ms/row", *[f"{n} ms/row" for n in names]], per_row)
        + "\n\n"
        + table(
            [
                "texts (path)",
                "n",
                "exact s/text",
                "path s/text",
                "speed-up",
                "Spearman median",
                "top-5 median",
            ],
            end_to_end,
        )
        + f"\n\nper row: medians of {args.rounds} interleaved rounds; explanations: {args.granularity} "
        f"granularity, max_evals {args.max_evals}, the predicted label, {args.threads} threads, "
        "through the service (exact and each path alternating which goes first)"
    )
    data = {
        "config": vars(args),
        "environment": environment(),
        "choice": choice.report(),
        "per_row": speed,
        "quality": quality,
    }
    write_results(Path(args.out or DEFAULT_OUT), "fast", data, text)
    return 0


def _per_row(model: Any, paths: dict[str, Any], sentences: list[str], rounds: int) -> list[dict[str, Any]]:
    """ms per row of one pass: exact's path and each candidate, rotating which goes first."""
    from shared.serving.fast import _exact_pass

    short = [e.ids for e in model.encode(sentences[:64])]
    short = [r for r in short if 20 <= len(r) <= 28][:32] or short[:32]
    review = model.encode([" ".join(sentences[200:230])])[0].ids[: min(270, model.max_length)]
    shapes = {"32 x ~24": short, f"2 x {len(review)}": [review, review]}
    runners = {EXACT: lambda ids, attention: _exact_pass(model, ids, attention), **paths}
    out = []
    for shape, rows in shapes.items():
        ids, attention = model.padded(rows)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for runner in runners.values():
            runner(ids, attention)  # warm
        names = list(runners)
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                for _ in range(3):
                    runners[name](ids, attention)
                times[name].append((time.perf_counter() - started) / 3 / len(rows) * 1000)
        ms = {name: median(values) for name, values in times.items()}
        out.append(
            {
                "shape": shape,
                "ms_per_row": ms,
                "speedup": {name: ratio(ms[EXACT], ms[name]) for name in paths},
            }
        )
    return out


def _quality(
    service: Any, paths: dict[str, Any], texts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Explain each text exact and through each path (the path as fast's runner, alternating which
    goes first); compare the rankings of exact's predicted label."""
    from shared.analysis.agreement import ranking_agreement
    from shared.io.schemas import ExplainOptions

    model = service.model
    served = model.fast_runner
    # Every label (the same passes): another path may predict another label than exact, and the
    # exact prediction's values are the ones compared.
    options = ExplainOptions(max_evals=args.max_evals, granularity=args.granularity, labels="all")
    fast_options = options.model_copy(update={"precision": "fast"})
    spent = {name: 0.0 for name in [EXACT, *paths]}
    spearman: dict[str, list[float]] = {name: [] for name in paths}
    overlap: dict[str, list[float]] = {name: [] for name in paths}
    try:
        for i, text in enumerate(texts):
            results = {}
            order = [EXACT, *paths]
            for name in order[i % len(order) :] + order[: i % len(order)]:
                model.fast_runner = paths.get(name)
                started = time.perf_counter()
                (results[name],) = service.explain([text], options if name == EXACT else fast_options)
                spent[name] += time.perf_counter() - started
            exact = results[EXACT]
            label = max(exact.model_output, key=exact.model_output.get)
            for name in paths:
                rank, top = ranking_agreement(exact.values[label], results[name].values[label])
                if rank is not None:
                    spearman[name].append(rank)
                overlap[name].append(top)
    finally:
        model.fast_runner = served
    return {
        "texts": len(texts),
        "exact_s_per_text": spent[EXACT] / len(texts),
        "paths": {
            name: {
                "s_per_text": spent[name] / len(texts),
                "spearman_median": median(spearman[name]),
                "top5_overlap_median": median(overlap[name]),
                "spearman_all": spearman[name],
            }
            for name in paths
        },
    }
