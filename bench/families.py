"""`python -m bench families`: the model families people serve, at their real base sizes.

Per family (random weights at the hub base model's shape, a tokenizer of its family trained on the SST-2
sentences): the per-row cost of torch and of onnxruntime at 24 and 270 tokens (alternated in blocks),
the seed's `shap.Explainer(pipeline)` against Clarion's exact explanation on SST-2 sentences and
reviews, and the cost of masking "text" (the seed's numbers) against "tokens".
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    environment,
    fmt,
    median,
    quiet_transformers,
    ratio,
    sst2_sentences,
    table,
    timed,
    write_results,
)

# bench name -> the family of tests/families.py (DeBERTa-v3 is a DeBERTa-v2 architecture)
FAMILIES = {
    "distilbert": "distilbert",
    "roberta": "roberta",
    "deberta-v3": "deberta-v2",
    "xlm-roberta": "xlm-roberta",
    "modernbert": "modernbert",
}
# Rows per pass at each length: what the engine's CPU pass (768 tokens) holds.
PASS_ROWS = {24: 32, 270: 2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help=f"comma list of: {', '.join(FAMILIES)}"
    )
    parser.add_argument("--texts", type=int, default=20, help="short SST-2 dev sentences (the first N)")
    parser.add_argument("--long", type=int, default=3, help="reviews of ~250-300 tokens")
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5, help="alternated blocks per backend and length")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads")
    parser.add_argument("--skip-seed", action="store_true", help="skip the slow seed approach")


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    import torch

    if args.smoke:
        args.families, args.texts, args.long, args.max_evals, args.rounds = "roberta", 1, 0, 40, 1
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; choose from {list(FAMILIES)}")
    torch.set_num_threads(args.threads)
    sentences = sst2_sentences()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="clarion-bench-families-") as tmp:
        for name in names:
            print(f"== {name}", flush=True)
            results.append(_family(name, Path(tmp), sentences, args))
    data = {"config": vars(args), "environment": environment(), "families": results}
    write_results(Path(args.out or DEFAULT_OUT), "families", data, _report(results))
    return 0


def _family(name: str, tmp: Path, sentences: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from bench.explain import _long_texts
    from shared.runtime.engine import Engine, pass_limits_for
    from shared.runtime.loading import load_text_model
    from shared.runtime.onnx import onnx_exact
    from shared.settings import Settings
    from tests.families import build_family_model

    small = bool(args.smoke)
    directory = build_family_model(
        tmp / name,
        FAMILIES[name],
        ["NEGATIVE", "POSITIVE"],
        size="tiny" if small else "base",
        max_length=128 if small else 512,
        corpus=sentences,
    )
    model = load_text_model(Settings(model_dir=str(directory), torch_threads=args.threads))
    runner = onnx_exact(model, tmp / "cache", args.threads)
    rows = _per_row_costs(model, runner, args.rounds, {24: 2, 270: 1} if small else PASS_ROWS)
    engine = Engine(model, pass_limits_for(model))
    model.exact_runner = runner  # as the service runs exact passes on a CPU
    samples = [("sentences", s) for s in sentences[: args.texts]]
    bounds = (50, 60) if small else (250, 300)
    samples += [("reviews", t) for t in _long_texts(model, sentences[args.texts :], args.long, bounds)]
    seed = None if args.skip_seed else _seed_explainer(directory)
    texts = [_explain(engine, seed, kind, text, args.max_evals) for kind, text in samples]
    engine.stop()
    for text in texts:
        print(
            f"{name} {text['kind']}: {text['tokens']} tokens, exact {text['exact_s']:.2f} s, "
            f"text {text['text_s']:.2f} s, seed {fmt(text['seed_s'])} s",
            flush=True,
        )
    return {
        "family": name,
        "graph": runner.graph if hasattr(runner, "graph") else None,
        "onnx_max_width": runner.max_width,
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "per_row": rows,
        "texts": texts,
        "summary": {kind: _summary(texts, kind) for kind in ("sentences", "reviews")},
    }


def _per_row_costs(model: Any, runner: Any, rounds: int, rows_at: dict[int, int]) -> dict[str, Any]:
    """ms per row of torch and onnxruntime at each length, alternated in blocks of 3 timed passes after
    an untimed one (so that one runtime's spinning threads do not slow the other), medians of rounds."""
    out: dict[str, Any] = {}
    for length, count in rows_at.items():
        ids, attention = model.padded([_row(model, length)] * count)
        runs = {
            "torch": lambda ids=ids, attention=attention: model.torch_forward(ids, attention),
            "onnxruntime": lambda ids=ids, attention=attention: runner(ids, attention),
        }
        samples: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(rounds):
            for backend in list(runs)[:: 1 if i % 2 == 0 else -1]:
                runs[backend]()  # untimed
                seconds = [timed(runs[backend])[1] for _ in range(3)]
                samples[backend].append(1000 * sorted(seconds)[1] / count)
        torch_ms, ort_ms = median(samples["torch"]), median(samples["onnxruntime"])
        out[str(length)] = {
            "rows": count,
            "torch_ms": torch_ms,
            "onnx_ms": ort_ms,
            "speedup": ratio(torch_ms, ort_ms),
        }
        print(f"  {length} tokens x {count}: torch {torch_ms:.2f} ms/row, onnxruntime {ort_ms:.2f} ms/row")
    return out


def _row(model: Any, length: int) -> np.ndarray:
    """A row of exactly `length` tokens: a text's first tokens between its boundary tokens."""
    (encoded,) = model.encode(["the film was good " * length])
    ids, head, tail = encoded.ids, model.keep_prefix, model.keep_suffix
    content = ids[head : len(ids) - tail][: length - head - tail]
    return np.concatenate([ids[:head], content, ids[len(ids) - tail :]])


def _seed_explainer(directory: Path) -> Any:
    """The seed's call: SHAP's default explainer on a transformers pipeline (string masking)."""
    import shap
    import transformers

    pipeline = transformers.pipeline(
        "text-classification", model=str(directory), tokenizer=str(directory), top_k=None
    )
    return shap.Explainer(pipeline)


def _explain(engine: Any, seed: Any, kind: str, text: str, max_evals: int) -> dict[str, Any]:
    """One text: Clarion exact (masking "tokens"), Clarion masking "text", then the seed."""
    from shared.explanation.explainer import explain_texts
    from shared.io.schemas import ExplainOptions

    tokens, text_masked = (ExplainOptions(max_evals=max_evals, masking=m) for m in ("tokens", "text"))
    (exact,), exact_s = timed(lambda: explain_texts(engine, [text], tokens))
    (by_text,), text_s = timed(lambda: explain_texts(engine, [text], text_masked))
    row: dict[str, Any] = {
        "kind": kind,
        "tokens": len(exact.units),
        "exact_s": exact_s,
        "text_s": text_s,
        "seed_s": None,
        "text_vs_seed": None,
        "tokens_vs_text": float(np.max(np.abs(_values(exact) - _values(by_text)))),
    }
    if seed is not None:
        np.random.seed(0)
        result, row["seed_s"] = timed(lambda: seed([text], max_evals=max_evals, silent=True))
        row["text_vs_seed"] = float(np.max(np.abs(_values(by_text) - np.asarray(result.values[0]))))
    return row


def _values(explanation: Any) -> np.ndarray:
    return np.array([explanation.values[label] for label in explanation.labels], dtype=np.float64).T


def _summary(texts: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    mine = [t for t in texts if t["kind"] == kind]
    if not mine:
        return {}
    exact = sum(t["exact_s"] for t in mine)
    text = sum(t["text_s"] for t in mine)
    seeds = [t["seed_s"] for t in mine]
    seed = None if None in seeds else sum(seeds)
    diffs = [t["text_vs_seed"] for t in mine if t["text_vs_seed"] is not None]
    return {
        "count": len(mine),
        "median_tokens": median([t["tokens"] for t in mine]),
        "exact_s": exact,
        "text_s": text,
        "seed_s": seed,
        "seed_over_exact": ratio(seed, exact),
        "text_over_tokens": ratio(text, exact),
        "max_text_vs_seed": max(diffs) if diffs else None,
        "max_tokens_vs_text": max(t["tokens_vs_text"] for t in mine),
    }


def _report(results: list[dict[str, Any]]) -> str:
    headers = ["family", "params", "ONNX max width"]
    headers += [f"{n} tok: torch / ort ms/row (x)" for n in PASS_ROWS]
    rows = []
    for r in results:
        width = r["onnx_max_width"]
        cells = [r["family"], f"{r['parameters'] / 1e6:.0f}M", "any" if width >= 1 << 20 else str(width)]
        for length in PASS_ROWS:
            c = r["per_row"].get(str(length))
            cells.append(
                "-" if c is None else f"{c['torch_ms']:.2f} / {c['onnx_ms']:.2f} ({c['speedup']:.2f}x)"
            )
        rows.append(cells)
    lines = ["per-row cost (alternated blocks, medians):", table(headers, rows), ""]
    headers = ["family", "texts", "tokens", "seed s", "exact s", "seed/exact", "text s", "text/tokens"]
    headers += ["max |text - seed|", "max |tokens - text|"]
    rows = []
    for r in results:
        for kind, s in r["summary"].items():
            if not s:
                continue
            rows.append(
                [
                    r["family"],
                    f"{s['count']} {kind}",
                    fmt(s["median_tokens"], ".0f"),
                    fmt(s["seed_s"]),
                    fmt(s["exact_s"]),
                    fmt(s["seed_over_exact"], ".2f", "x"),
                    fmt(s["text_s"]),
                    fmt(s["text_over_tokens"], ".2f", "x"),
                    fmt(s["max_text_vs_seed"], ".1e"),
                    fmt(s["max_tokens_vs_text"], ".1e"),
                ]
            )
    lines += ["explanations (max_evals as configured; exact on onnxruntime as served):", table(headers, rows)]
    return "\n".join(lines)
