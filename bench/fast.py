"""`python -m bench fast`: precision "fast" on this CPU (the int8 graph, without bf16) against exact:
per-row speed at 24 and 270 tokens, interleaved, and how it ranks units (Spearman, top-5 overlap)
on SST-2 sentences and on reviews."""

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
    sst2_sentences,
    table,
    write_results,
)
from bench.explain import _long_texts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texts", type=int, default=40, help="SST-2 dev sentences")
    parser.add_argument("--long", type=int, default=4, help="reviews of ~250-300 tokens")
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--granularity", default="word")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    from shared.runtime.engine import Engine, pass_limits_for
    from shared.runtime.loading import load_text_model
    from shared.runtime.onnx import onnx_exact, onnx_int8
    from shared.settings import Settings

    if args.smoke:
        args.texts, args.long, args.max_evals, args.rounds = 3, 1, 60, 2
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        model_dir = args.model_dir
        if args.smoke:
            from tests.support import build_tiny_model

            model_dir = str(build_tiny_model(Path(tmp) / "tiny", labels=["negative", "positive"]))
        model = load_text_model(Settings(model_dir=model_dir, torch_threads=args.threads))
        exact = onnx_exact(model, Path(tmp) / "cache", args.threads)
        int8 = onnx_int8(model, exact, args.threads)
        model.exact_runner, model.fast_runner = exact, int8
        sentences = sst2_sentences()
        texts = sentences[: args.texts]
        reviews = _long_texts(model, sentences[args.texts :], args.long, (250, 300)) if args.long else []
        speed = _per_row(model, exact, int8, sentences, args.rounds)
        engine = Engine(model, pass_limits_for(model))
        try:
            quality = {
                "sentences": _quality(engine, texts, args),
                **({"reviews": _quality(engine, reviews, args)} if reviews else {}),
            }
        finally:
            engine.stop()

    headers = ["rows x tokens", "fp32 ms/row", "int8 ms/row", "int8 speed-up"]
    rows = [
        [
            s["shape"],
            fmt(s["fp32_ms_per_row"], ".3f"),
            fmt(s["int8_ms_per_row"], ".3f"),
            fmt(s["speedup"], ".2f", "x"),
        ]
        for s in speed
    ]
    headers2 = [
        "texts",
        "n",
        "exact s/text",
        "fast s/text",
        "speed-up",
        "Spearman median",
        "top-5 overlap median",
    ]
    rows2 = [
        [
            name,
            str(q["texts"]),
            fmt(q["exact_s_per_text"], ".3f"),
            fmt(q["fast_s_per_text"], ".3f"),
            fmt(ratio(q["exact_s_per_text"], q["fast_s_per_text"]), ".2f", "x"),
            fmt(q["spearman_median"], ".3f"),
            fmt(q["top5_overlap_median"], ".2f"),
        ]
        for name, q in quality.items()
    ]
    text = (
        table(headers, rows)
        + "\n\n"
        + table(headers2, rows2)
        + f"\n\nper row: medians of {args.rounds} interleaved rounds; explanations: "
        f"{args.granularity} granularity, max_evals {args.max_evals}, the predicted label, "
        f"{args.threads} threads; int8: onnxruntime dynamic quantization, per-channel int8 weights"
    )
    data = {"config": vars(args), "environment": environment(), "per_row": speed, "quality": quality}
    write_results(Path(args.out or DEFAULT_OUT), "fast", data, text)
    print(text)
    return 0


def _per_row(model: Any, exact: Any, int8: Any, sentences: list[str], rounds: int) -> list[dict[str, Any]]:
    """ms per row of one pass, fp32 graph against int8 graph, alternating which goes first."""
    short = [e.ids for e in model.encode(sentences[:64])]
    short = [r for r in short if 20 <= len(r) <= 28][:32] or short[:32]
    review = model.encode([" ".join(sentences[200:230])])[0].ids[:270]
    shapes = {"32 x ~24": short, "2 x 270": [review, review]}
    out = []
    for shape, rows in shapes.items():
        ids, attention = model.padded(rows)
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for runner in (exact, int8):
            runner(ids, attention)  # warm
        for round_ in range(rounds):
            order = [("fp32", exact), ("int8", int8)][:: 1 if round_ % 2 == 0 else -1]
            for name, runner in order:
                started = time.perf_counter()
                for _ in range(3):
                    runner(ids, attention)
                times[name].append((time.perf_counter() - started) / 3 / len(rows) * 1000)
        fp32, int8_ms = median(times["fp32"]), median(times["int8"])
        out.append(
            {
                "shape": shape,
                "fp32_ms_per_row": fp32,
                "int8_ms_per_row": int8_ms,
                "speedup": ratio(fp32, int8_ms),
            }
        )
    return out


def _quality(engine: Any, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Explain each text exact and fast (alternating which goes first); compare the rankings."""
    from shared.analysis.agreement import ranking_agreement
    from shared.explanation.explainer import explain_texts
    from shared.io.schemas import ExplainOptions

    # Every label (the same passes): int8 may predict another label than exact, and the exact
    # prediction's values are the ones compared.
    options = ExplainOptions(max_evals=args.max_evals, granularity=args.granularity, labels="all")
    fast_options = options.model_copy(update={"precision": "fast"})
    spent = {"exact": 0.0, "fast": 0.0}
    spearman, overlap = [], []
    for i, text in enumerate(texts):
        results = {}
        for name, opts in [("exact", options), ("fast", fast_options)][:: 1 if i % 2 == 0 else -1]:
            started = time.perf_counter()
            (results[name],) = explain_texts(engine, [text], opts)
            spent[name] += time.perf_counter() - started
        exact, fast = results["exact"], results["fast"]
        label = max(exact.model_output, key=exact.model_output.get)
        rank, top = ranking_agreement(exact.values[label], fast.values[label])
        if rank is not None:
            spearman.append(rank)
        overlap.append(top)
    return {
        "texts": len(texts),
        "exact_s_per_text": spent["exact"] / len(texts),
        "fast_s_per_text": spent["fast"] / len(texts),
        "spearman_median": median(spearman),
        "top5_overlap_median": median(overlap),
        "spearman_all": spearman,
    }
