"""`python -m bench explain`: seed SHAP pipeline vs Clarion exact/fast vs SHAP id-space reference."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    best_time,
    build_random_distilbert,
    environment,
    fmt,
    mean,
    median,
    quiet_transformers,
    ratio,
    sst2_sentences,
    table,
    timed,
    write_results,
)

MODELS = ("minilm", "distilbert")
FLOOR_ROWS = (2, 4, 8, 16, 32, 64, 128, 256, 512)  # past 64 only where the device's passes are
FLOOR_MAX_TOKENS = 8192


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texts", type=int, default=20, help="short SST-2 dev sentences (the first N)")
    parser.add_argument("--long", type=int, default=3, help="long reviews of ~250-300 tokens")
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=5,
        help="SHAP's batch size (Clarion's and the reference's); 5 is SHAP's",
    )
    parser.add_argument(
        "--pass-tokens", type=int, default=None, help="the engine's PASS_TOKENS (default: device's)"
    )
    parser.add_argument(
        "--spare-tokens", type=int, default=None, help="the engine's PASS_SPARE_TOKENS (default: device's)"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma list of: minilm, distilbert")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--skip-seed", action="store_true", help="skip the slow seed approach")
    parser.add_argument(
        "--backends",
        default="torch,onnxruntime",
        help="exact backends, measured side by side per text (onnxruntime: CPU only)",
    )


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    import torch

    if args.smoke:
        args.texts, args.long, args.max_evals, args.models = 1, 1, 64, "minilm"  # one of each kind
    long_range = (50, 60) if args.smoke else (250, 300)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {list(MODELS)}")
    torch.set_num_threads(args.threads)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        for name in models:
            engine = _load(name, args.threads, Path(tmp), args.pass_tokens, args.spare_tokens)
            model = engine.model
            sentences = sst2_sentences()
            samples = [("short", s) for s in sentences[: args.texts]]
            samples += [
                ("long", t) for t in _long_texts(model, sentences[args.texts :], args.long, long_range)
            ]
            if not samples:
                continue
            seed = None if args.skip_seed else _seed_explainer(model)
            others = _other_backends(model, args.backends, args.threads, Path(tmp))
            _warm_up(engine, seed, samples[0][1], args.batch_size, others)
            for kind, text in samples:
                for row in _measure(engine, seed, text, args.max_evals, args.batch_size, others):
                    rows.append({"model": name, "kind": kind, **row})
                    print(_row_line(rows[-1]), flush=True)
            engine.stop()

    summary = _summarize(rows)
    data = {"config": _config(args), "environment": environment(), "rows": rows, "summary": summary}
    text = _per_text_table(rows) + "\n\n" + "\n".join(_summary_line(s) for s in summary)
    write_results(Path(args.out or DEFAULT_OUT), "explain", data, text)
    return 0


def _load(name: str, threads: int, tmp: Path, pass_tokens: int | None, spare_tokens: int | None) -> Any:
    """The model and its engine, as a Clarion process runs them."""
    from shared.runtime.engine import Engine, pass_limits_for
    from shared.runtime.loading import load_text_model
    from shared.settings import Settings

    directory = MINILM_DIR if name == "minilm" else build_random_distilbert(tmp / name)
    model = load_text_model(Settings(model_dir=str(directory), torch_threads=threads))
    return Engine(model, pass_limits_for(model, tokens=pass_tokens, spare_tokens=spare_tokens))


def _long_texts(model: Any, sentences: list[str], count: int, bounds: tuple[int, int]) -> list[str]:
    """Join consecutive sentences into reviews of `bounds[0]`..`bounds[1]` tokens (specials included)."""
    low, high = bounds
    texts: list[str] = []
    current: list[str] = []
    tokens = 2  # [CLS] ... [SEP]
    for sentence in sentences:
        if len(texts) >= count:
            break
        n = len(model.tokenizer(sentence, add_special_tokens=False)["input_ids"])
        if tokens + n > high:
            continue  # would overshoot: try the next sentence
        current.append(sentence)
        tokens += n
        if tokens >= low:
            texts.append(" ".join(current))
            current, tokens = [], 2
    return texts


def _other_backends(model: Any, names: str, threads: int, tmp: Path) -> dict[str, Any]:
    """Exact runners besides torch, by name (onnxruntime only where the model is on a CPU)."""
    from shared.runtime.onnx import onnx_exact

    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {"torch", "onnxruntime"})
    if unknown:
        raise SystemExit(f"--backends: unknown {unknown}; choose from torch, onnxruntime")
    if "onnxruntime" in wanted and model.device.type == "cpu":
        return {"onnxruntime": onnx_exact(model, tmp / "cache", threads)}
    return {}


def _seed_explainer(model: Any) -> Any:
    """What the seed did: SHAP's default explainer on a transformers pipeline (string masking)."""
    import shap
    import transformers

    pipeline = transformers.pipeline(
        "text-classification", model=model.model, tokenizer=model.tokenizer, top_k=None, device=model.device
    )
    return shap.Explainer(pipeline)


def _options(max_evals: int, precision: str, batch_size: int) -> Any:
    from shared.io.schemas import ExplainOptions

    return ExplainOptions(max_evals=max_evals, seed=0, precision=precision, batch_size=batch_size)


def _warm_up(engine: Any, seed: Any, text: str, batch_size: int, others: dict[str, Any]) -> None:
    """First calls allocate, pick kernels, quantize (fast on CPUs without bf16): keep that out of timings."""
    from shared.explanation.explainer import explain_texts

    explain_texts(engine, [text], _options(16, "exact", batch_size))
    with _exact_runner(engine.model, others.get("onnxruntime")):
        explain_texts(engine, [text], _options(16, "fast", batch_size))
    for runner in others.values():
        with _exact_runner(engine.model, runner):
            explain_texts(engine, [text], _options(16, "exact", batch_size))
    _reference_values(engine.model, text, 16, batch_size)
    if seed is not None:
        seed([text], max_evals=16, silent=True)


@contextmanager
def _exact_runner(model: Any, runner: Any) -> Iterator[None]:
    model.exact_runner = runner
    try:
        yield
    finally:
        model.exact_runner = None


def _measure(
    engine: Any, seed: Any, text: str, max_evals: int, batch_size: int, others: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per exact backend: torch's first, then each other's right after it (side by side)."""
    from shared.explanation.explainer import explain_texts

    model = engine.model
    ids = model.encode([text])[0].ids
    exact_options, fast_options = (_options(max_evals, p, batch_size) for p in ("exact", "fast"))
    exact, exact_run = _run(engine, text, exact_options, ids)
    passes_before_fast = engine.stats.snapshot()["passes"]
    # As a service runs it: with its default exact backend attached (onnxruntime on a CPU), which
    # `fast` takes where the device has no half-precision path.
    with _exact_runner(model, others.get("onnxruntime")):
        (fast,), fast_s = timed(lambda: explain_texts(engine, [text], fast_options))
    fast_passes = engine.stats.snapshot()["passes"] - passes_before_fast
    reference, reference_s = timed(lambda: _reference_values(model, text, max_evals, batch_size))
    exact_values, fast_values = _values(exact), _values(fast)
    label = int(np.argmax([exact.model_output[name] for name in exact.labels]))
    inner = slice(model.keep_prefix, len(exact.units) - model.keep_suffix)
    spearman_fast, top3_fast = _agreement(exact_values[inner, label], fast_values[inner, label])
    row: dict[str, Any] = {
        "backend": "torch",
        "text": text,
        "tokens": len(exact.units),
        "evaluations": exact.evaluations,
        "passes": exact_run["passes"],
        "rows": exact_run["rows"],
        "fast_passes": fast_passes,
        "predicted": exact.labels[label],
        "exact_s": exact_run["exact_s"],
        "fast_s": fast_s,
        "reference_s": reference_s,
        "floor_s": exact_run["floor_s"],
        "max_abs_diff": float(np.max(np.abs(exact_values - reference))),
        "spearman_fast": spearman_fast,
        "top3_fast": top3_fast,
        "seed_s": None,
        "seed_tokens": None,
        "spearman_seed": None,
        "top3_seed": None,
    }
    if seed is not None:
        result, row["seed_s"] = timed(lambda: seed([text], max_evals=max_evals, silent=True))
        column = [str(n) for n in result.output_names].index(exact.labels[label])
        seed_values = np.asarray(result.values[0])[:, column]
        row["seed_tokens"] = len(seed_values)
        if len(seed_values) == len(exact.units):  # same tokenizer, so normally the same tokens
            row["spearman_seed"], row["top3_seed"] = _agreement(
                exact_values[inner, label], seed_values[inner]
            )
    rows = [row]
    for name, runner in others.items():
        with _exact_runner(model, runner):
            other, other_run = _run(engine, text, exact_options, ids)
        rows.append(
            row
            | other_run
            | {
                "backend": name,
                "max_abs_diff": float(np.max(np.abs(_values(other) - reference))),
                "torch_floor_s": row["floor_s"],
            }
        )
    return rows


def _run(engine: Any, text: str, options: Any, ids: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """One timed exact explanation on the engine's current backend, its passes and rows (computed
    ahead included), and the floor: its evaluations at that backend's best per-row cost."""
    from shared.explanation.explainer import explain_texts

    before = engine.stats.snapshot()
    (explanation,), seconds = timed(lambda: explain_texts(engine, [text], options))
    after = engine.stats.snapshot()
    return explanation, {
        "exact_s": seconds,
        "passes": after["passes"] - before["passes"],
        "rows": after["rows"] - before["rows"],
        "floor_s": explanation.evaluations * _per_row_cost(engine.model, ids),
    }


def _values(explanation: Any) -> np.ndarray:
    """Tokens x labels."""
    return np.array([explanation.values[label] for label in explanation.labels], dtype=np.float64).T


def _reference_values(model: Any, text: str, max_evals: int, batch_size: int) -> np.ndarray:
    """SHAP's PartitionExplainer with the id-space Text masker, as SHAP documents it: tokens x labels."""
    import shap
    import torch

    def f(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.tensor(np.asarray(ids, dtype=np.int64), device=model.device)
            logits = model.model(input_ids=batch).logits.float().cpu().numpy()
        return model.outputs(logits, "probability")

    masker = shap.maskers.Text(model.tokenizer, output_type="token_ids")
    explainer = shap.Explainer(f, masker, algorithm="partition")
    np.random.seed(0)
    result = explainer([text], max_evals=max_evals, batch_size=batch_size, silent=True)
    return np.asarray(result.values[0], dtype=np.float64)


def _per_row_cost(model: Any, ids: np.ndarray, repeats: int = 2) -> float:
    """The model's best seconds per row on this text: one unpadded pass over copies of its ids, at
    whichever pass size runs best (the floor no pass size of the engine can beat)."""
    from shared.runtime.engine import pass_limits_for

    limits = pass_limits_for(model)  # a GPU's passes are far larger than a CPU's
    most_rows, most_tokens = max(64, limits.rows), max(FLOOR_MAX_TOKENS, limits.tokens)
    costs = []
    for b in FLOOR_ROWS:
        if b > 2 and (b > most_rows or b * len(ids) > most_tokens):
            break
        rows = [ids] * b
        costs.append(best_time(lambda rows=rows: model.forward(rows), repeats) / b)
    return min(costs)


def _agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float | None, float | None]:
    """Spearman rank correlation and top-3 (by |value|) token overlap of two attributions."""
    from scipy.stats import spearmanr

    if len(reference) != len(other) or len(reference) == 0:
        return None, None
    k = min(3, len(reference))
    top_a = set(np.argsort(-np.abs(reference), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.abs(other), kind="stable")[:k].tolist())
    top3 = len(top_a & top_b) / k
    if len(reference) < 2:
        return None, top3
    rho = float(spearmanr(reference, other).statistic)
    return (None if np.isnan(rho) else rho), top3


def _summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["kind"], row["backend"]), []).append(row)
    summary = []
    for (model, kind, backend), group in groups.items():
        s: dict[str, Any] = {"model": model, "kind": kind, "backend": backend, "texts": len(group)}
        for key in ("seed_s", "exact_s", "fast_s", "floor_s", "tokens", "evaluations", "passes", "rows"):
            s[f"median_{key}"] = median([r[key] for r in group])
        s["seed_over_exact"] = ratio(s["median_seed_s"], s["median_exact_s"])
        s["seed_over_fast"] = ratio(s["median_seed_s"], s["median_fast_s"])
        s["exact_over_floor"] = ratio(s["median_exact_s"], s["median_floor_s"])
        torch_floor = median([r.get("torch_floor_s", r["floor_s"]) for r in group])
        s["exact_over_torch_floor"] = ratio(s["median_exact_s"], torch_floor)
        s["median_spearman_fast"] = median([r["spearman_fast"] for r in group])
        s["mean_top3_fast"] = mean([r["top3_fast"] for r in group])
        s["median_spearman_seed"] = median([r["spearman_seed"] for r in group])
        s["max_abs_diff"] = max(r["max_abs_diff"] for r in group)
        summary.append(s)
    return summary


HEADERS = [
    "model",
    "kind",
    "backend",
    "tokens",
    "evals",
    "passes",
    "rows",
    "seed s",
    "exact s",
    "fast s",
    "floor s",
    "maxdiff",
]
HEADERS += ["spearman fast", "top3 fast", "spearman seed"]


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        r["model"],
        r["kind"],
        r["backend"],
        str(r["tokens"]),
        str(r["evaluations"]),
        str(r.get("passes", "-")),
        str(r.get("rows", "-")),
        fmt(r["seed_s"]),
        fmt(r["exact_s"]),
        fmt(r["fast_s"]),
        fmt(r["floor_s"]),
        fmt(r["max_abs_diff"], ".1e"),
        fmt(r["spearman_fast"]),
        fmt(r["top3_fast"]),
        fmt(r["spearman_seed"]),
    ]


def _row_line(row: dict[str, Any]) -> str:
    return " | ".join(f"{h} {c}" for h, c in zip(HEADERS, _cells(row), strict=True))


def _per_text_table(rows: list[dict[str, Any]]) -> str:
    return table(HEADERS, [_cells(r) for r in rows])


def _summary_line(s: dict[str, Any]) -> str:
    return (
        f"{s['model']} {s['kind']} {s['backend']} "
        f"(n={s['texts']}, median {fmt(s['median_tokens'], '.0f')} tokens, "
        f"{fmt(s['median_passes'], '.0f')} passes, {fmt(s['median_rows'], '.0f')} rows): "
        f"median seed {fmt(s['median_seed_s'], suffix='s')} exact {fmt(s['median_exact_s'], suffix='s')} "
        f"fast {fmt(s['median_fast_s'], suffix='s')} floor {fmt(s['median_floor_s'], suffix='s')} | "
        f"seed/exact {fmt(s['seed_over_exact'], suffix='x')} "
        f"seed/fast {fmt(s['seed_over_fast'], suffix='x')} "
        f"exact/floor {fmt(s['exact_over_floor'], suffix='x')} "
        f"exact/torch floor {fmt(s['exact_over_torch_floor'], suffix='x')} | "
        f"spearman(fast) {fmt(s['median_spearman_fast'])} top3(fast) {fmt(s['mean_top3_fast'])} "
        f"spearman(seed) {fmt(s['median_spearman_seed'])} | max|exact-ref| {fmt(s['max_abs_diff'], '.1e')}"
    )


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "texts",
        "long",
        "max_evals",
        "batch_size",
        "pass_tokens",
        "spare_tokens",
        "models",
        "threads",
        "skip_seed",
        "backends",
        "smoke",
    )
    return {key: getattr(args, key) for key in keys}
