"""`clarion distill INPUT --out DIR`: train the amortized explainer (shared/explanation/amortized.py)
for the served model, on the user's unlabelled texts.

1. Every text is explained exactly at token granularity, every label, into DIR/records.jsonl
   (exactly as `clarion explain` does: a progress bar, resumable line by line).
2. Nine texts in ten train a ridge regression from the frozen classifier's token features to those
   values (the ridge strength chosen on the tenth by held-out error); the tenth is held out.
3. The held-out texts are explained exactly at word granularity and by the artifact, and the
   artifact records how close it came: the median Spearman and top-5 overlap of the predicted
   label's word values, and ERASER comprehensiveness of both rankings. The model's fingerprint
   goes in too: a server refuses an artifact trained for another model.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.cli.explain import explain_into, read_lines, report
from shared.errors import ClarionError
from shared.io.schemas import ExplainOptions, SeedBody, parse_model
from shared.settings import Settings

HELD_OUT_EVERY = 10  # every tenth text is held out
LAMBDAS = (0.01, 0.1, 1.0, 10.0, 100.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help=".txt (a text per line), .jsonl, .csv or .tsv")
    parser.add_argument("--out", type=Path, required=True, help="the artifact's folder; resumed if it exists")
    parser.add_argument("--text-field", default="text", help="the text's field (.jsonl) or column (.csv)")
    parser.add_argument("--delimiter", default=",", help="a .csv input's delimiter")
    parser.add_argument("--max-evals", type=int, help="model evaluations per text (default: the API's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=8, help="texts explained together (default 8)")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from shared.serving.service import ClarionService

    if not args.input.is_file():
        raise ClarionError(f"{args.input}: no such file")
    args.out.mkdir(parents=True, exist_ok=True)
    parameters: dict[str, Any] = {"explain": True, "granularity": "token", "labels": "all", "seed": args.seed}
    if args.max_evals is not None:
        parameters["max_evals"] = args.max_evals
    token_options = parse_model(SeedBody, {"data": "x", **parameters}, settings).explain_options()
    records_path = args.out / "records.jsonl"
    lines = read_lines(args.input, args.text_field, args.text_field, None, args.delimiter)
    explaining = argparse.Namespace(url=None, api_key=None, timeout=0, chunk=args.chunk)
    interrupted = explain_into(explaining, settings, parameters, lines, records_path)
    if interrupted is not None:
        return interrupted
    started = time.perf_counter()
    service = ClarionService(settings)
    service.load()
    records = [r for r in _records(records_path) if "explanation" in r]
    if len(records) < HELD_OUT_EVERY:
        raise ClarionError(f"{len(records)} text(s) explained: distilling needs {HELD_OUT_EVERY} at least")
    held = [r for i, r in enumerate(records) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [r for i, r in enumerate(records) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    report(f"training on {len(train)} text(s), {len(held)} held out")
    weights, strength = _fit(service, train, held)
    word_options = token_options.model_copy(update={"granularity": "word"})
    validation = _validate(service, weights, [r["text"] for r in held], word_options)
    model = service.model
    meta = {
        "version": 1,
        "model_id": model.model_id,
        "model_fingerprint": model.fingerprint,
        "labels": model.labels,
        "features": "the frozen classifier's last layer: h, h * h0 (h0: the first token's), 1",
        "ridge_lambda": strength,
        "trained_texts": len(train),
        "held_out_texts": len(held),
        "max_evals": token_options.max_evals,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(time.perf_counter() - started, 1),
        "validation": validation,
    }
    from shared.explanation.amortized import AmortizedExplainer

    AmortizedExplainer(weights, meta).save(args.out)
    service.stop()
    report(f"amortized explainer in {args.out}: held-out {json.dumps(validation)}")
    return 0


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return sorted(out, key=lambda r: r.get("line", 0))


def _examples(service: Any, records: list[dict[str, Any]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each text's token features and exact token values (kept tokens, [CLS] and [SEP], left out)."""
    from shared.explanation.amortized import token_features
    from shared.explanation.explainer import new_game

    model, options = service.model, ExplainOptions()  # token granularity, as the values were
    features, targets = [], []
    for start in range(0, len(records), 32):
        batch = records[start : start + 32]
        encoded = model.encode([r["text"] for r in batch])
        for record, text, states in zip(batch, encoded, token_features(model, encoded), strict=True):
            pairs = record["explanation"]
            if len(pairs) != len(text.ids):
                continue  # another tokenization (the model changed since): not a training example
            keep = new_game(model, text, options).keep  # the boundary tokens, as the explainer keeps them
            values = np.array([[values[label] for label in model.labels] for _, values in pairs])
            features.append(states[~keep])
            targets.append(values[~keep])
    return features, targets


def _fit(service: Any, train: list[dict[str, Any]], held: list[dict[str, Any]]) -> tuple[np.ndarray, float]:
    """Ridge regression on the normal equations (features standardised by their training scale);
    the strength with the lowest held-out squared error."""
    x_train, y_train = _examples(service, train)
    x_held, y_held = _examples(service, held)
    x, y = np.vstack(x_train).astype(np.float64), np.vstack(y_train)
    gram, moment = x.T @ x, x.T @ y
    scale = np.sqrt(np.maximum(np.diag(gram) / len(x), 1e-12))
    best: tuple[float, np.ndarray, float] | None = None
    held_x, held_y = np.vstack(x_held).astype(np.float64), np.vstack(y_held)
    for strength in LAMBDAS:
        weights = np.linalg.solve(gram + strength * len(x) * np.diag(scale**2), moment)
        error = float(np.mean((held_x @ weights - held_y) ** 2))
        if best is None or error < best[0]:
            best = (error, weights, strength)
    assert best is not None
    return best[1], best[2]


def _validate(
    service: Any, weights: np.ndarray, texts: list[str], options: ExplainOptions
) -> dict[str, float]:
    """Held-out figures at word granularity, for each text's predicted label: Spearman and top-5
    overlap of the artifact's values against exact's, and both rankings' comprehensiveness."""
    from shared.analysis.agreement import ranking_agreement
    from shared.explanation.amortized import AmortizedExplainer, explain_amortized
    from shared.explanation.explainer import explain_encoded, faithfulness_of
    from shared.serving.classifier import run_unmasked

    engine, model = service.engine, service.model
    encoded = model.encode(texts)
    unmasked = run_unmasked(engine, encoded)
    exact = explain_encoded(
        engine, encoded, options.model_copy(update={"faithfulness": True}), None, unmasked
    )
    candidate = AmortizedExplainer(weights, {"validation": {}})
    predicted = explain_amortized(engine, candidate, encoded, [u[0] for u in unmasked], options)
    spearman, overlap, labels, values = [], [], [], []
    for e, p in zip(exact, predicted, strict=True):
        label = max(e.model_output, key=e.model_output.get)
        b = np.array(p.values[label])
        rank, top = ranking_agreement(e.values[label], b)
        if rank is not None:
            spearman.append(rank)
        overlap.append(top)
        labels.append([model.labels.index(label)])
        values.append(b[:, None])
    measured = faithfulness_of(engine, texts, options, values, labels)
    comprehensiveness = [next(iter(m.values())).comprehensiveness for m in measured]
    exact_comprehensiveness = [
        e.faithfulness[max(e.model_output, key=e.model_output.get)].comprehensiveness for e in exact
    ]
    return {
        "granularity": "word",
        "spearman_median": round(float(np.nanmedian(spearman)), 4),
        "top5_overlap_median": round(float(np.median(overlap)), 4),
        "comprehensiveness_aopc": round(float(np.mean(comprehensiveness)), 4),
        "exact_comprehensiveness_aopc": round(float(np.mean(exact_comprehensiveness)), 4),
    }
