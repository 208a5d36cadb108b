"""`clarion distill INPUT --out DIR`: train the amortized explainer (shared/explanation/amortized.py)
for the served model, on the user's unlabelled texts.

1. Every text is explained exactly at token granularity, every label, into DIR/records.jsonl
   (exactly as `clarion explain` does: a progress bar, resumable line by line; with `--url`, by a
   running Clarion server, a GPU one say; with `--jobs N` too, N chunks at once as explanation jobs,
   which a deployment's Celery workers label in parallel).
2. Nine texts in ten train a copy of the classifier's encoder with a per-token head to predict those
   values (shared/explanation/distillation.py); the tenth is held out.
3. The held-out texts are explained exactly at word granularity and by the artifact, and the
   artifact records how close it came: the median Spearman and top-5 overlap of the predicted
   label's word values, and ERASER comprehensiveness of both rankings; and its fit (its word values
   against its own labels', on training and held-out texts: underfitting or learning by heart).
   The model's fingerprint goes in too: a server refuses an artifact trained for another model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.cli.explain import add_server_options, explain_into, read_lines, report
from shared.errors import ClarionError
from shared.explanation.distillation import ENCODER_LEARNING_RATE
from shared.io.schemas import ExplainOptions, SeedBody, parse_model
from shared.settings import Settings

HELD_OUT_EVERY = 10  # every tenth text is held out
FIT_TEXTS = 400  # about as many training texts its fit is measured on (one pass of the copy each)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help=".txt (a text per line), .jsonl, .csv or .tsv")
    parser.add_argument("--out", type=Path, required=True, help="the artifact's folder; resumed if it exists")
    parser.add_argument("--text-field", default="text", help="the text's field (.jsonl) or column (.csv)")
    parser.add_argument("--delimiter", default=",", help="a .csv input's delimiter")
    parser.add_argument("--max-evals", type=int, help="model evaluations per text (default: the API's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=_positive(int), default=8, help="passes over the training texts (default 8)"
    )
    parser.add_argument(
        "--learning-rate",
        type=_positive(float),
        default=ENCODER_LEARNING_RATE,
        help=f"the encoder copy's peak learning rate (default {ENCODER_LEARNING_RATE:g})",
    )
    add_server_options(parser, "label on this Clarion server (a GPU one, say) instead of in this process")


def _positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` above 0 (no NaN, no infinity), or a usage error naming it."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0 < value < math.inf):
            raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0")
        return value

    return parse


def main(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here, not above: `clarion serve` imports this module to build its parser, and must not
    # import prometheus_client (through the engine) before it chooses the metrics' folder.
    from shared.explanation.amortized import ARTIFACT_VERSION, AmortizedExplainer
    from shared.explanation.distillation import train as train_explainer
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
    explaining = argparse.Namespace(
        url=args.url, api_key=args.api_key, timeout=args.timeout, chunk=args.chunk, jobs=args.jobs
    )
    interrupted = explain_into(explaining, settings, parameters, lines, records_path)
    if interrupted is not None:
        return interrupted
    # Distilling runs exact only: no CPU for measuring fast's candidates beside the training.
    service = ClarionService(dataclasses.replace(settings, fast_backend="exact"))
    service.load()
    records = [r for r in _records(records_path) if "explanation" in r]
    if len(records) < HELD_OUT_EVERY:
        raise ClarionError(f"{len(records)} text(s) explained: distilling needs {HELD_OUT_EVERY} at least")
    held = [r for i, r in enumerate(records) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [r for i, r in enumerate(records) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    report(f"training on {len(train)} text(s), {len(held)} held out")
    started = time.perf_counter()
    examples = _examples(service, train)
    trained = train_explainer(service.model, examples, args.epochs, args.seed, report, args.learning_rate)
    training_seconds = time.perf_counter() - started
    explainer = AmortizedExplainer(
        trained.encoder, trained.weights, trained.bias, trained.scale, {"validation": {}}
    )
    word_options = token_options.model_copy(update={"granularity": "word"})
    started = time.perf_counter()
    validation = _validate(service, explainer, [r["text"] for r in held], word_options)
    validation_seconds = time.perf_counter() - started  # the held-out texts explained exactly, mostly
    fit = {
        # evenly over the training texts: a corpus's kinds of text come in runs (sentences, then
        # documents, then clauses), and its first texts alone would be one kind
        "training": _fit(service, explainer, train[:: max(1, len(train) // FIT_TEXTS)], examples),
        "held_out": _fit(service, explainer, held, _examples(service, held)),
    }
    model = service.model
    meta = {
        "version": ARTIFACT_VERSION,
        "model_id": model.model_id,
        "model_fingerprint": model.fingerprint,
        "labels": model.labels,
        "output": token_options.output,
        "network": "a trained copy of the classifier's encoder, a linear head per token",
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "training_losses": [round(loss, 5) for loss in trained.losses],
        "trained_texts": len(train),
        "held_out_texts": len(held),
        "max_evals": token_options.max_evals,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(training_seconds, 1),
        "validation_seconds": round(validation_seconds, 1),
        "validation": validation,
        "fit": fit,
    }
    AmortizedExplainer(trained.encoder, trained.weights, trained.bias, trained.scale, meta).save(args.out)
    service.stop()
    report(f"amortized explainer in {args.out}: held-out {json.dumps(validation)}; fit {json.dumps(fit)}")
    return 0


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return sorted(out, key=lambda r: r.get("line", 0))


def _examples(service: Any, records: list[dict[str, Any]]) -> list[Any]:
    """Each text's training example (kept tokens, [CLS] and [SEP], are no players)."""
    from shared.explanation.distillation import Example
    from shared.explanation.explainer import new_game

    model, options = service.model, ExplainOptions()  # token granularity, as the values were
    words = ExplainOptions(granularity="word")
    examples = []
    for start in range(0, len(records), 64):
        batch = records[start : start + 64]
        for record, text in zip(batch, model.encode([r["text"] for r in batch]), strict=True):
            pairs = record["explanation"]
            if len(pairs) != len(text.ids):
                continue  # another tokenization (the model changed since): not a training example
            keep = new_game(model, text, options).keep  # the boundary tokens, as the explainer keeps them
            values = np.array([[values[label] for label in model.labels] for _, values in pairs])
            output, base = record["model_output"], record["base_values"]
            delta = np.array([output[label] - base[label] for label in model.labels])
            word_of = np.asarray(new_game(model, text, words).player_of_token)
            word_of = np.where(~keep & (word_of >= 0), word_of, -1)
            examples.append(Example(np.asarray(text.ids), ~keep, values, delta, word_of))
    return examples


def _fit(service: Any, explainer: Any, records: list[dict[str, Any]], examples: list[Any]) -> float | None:
    """The median Spearman, over these texts, of the artifact's word values against its own labels'
    (token values summed per word), for each text's predicted label: on training texts against held-out
    ones, it tells a network that cannot fit its labels (both low) from one that learnt its texts
    by heart (training high, held-out low)."""
    from shared.analysis.agreement import ranking_agreement
    from shared.explanation.amortized import explain_amortized
    from shared.serving.classifier import run_unmasked

    by_text = {example.ids.tobytes(): example for example in examples}
    encoded = [e for e in service.model.encode([r["text"] for r in records]) if e.ids.tobytes() in by_text]
    unmasked = run_unmasked(service.engine, encoded)
    words = ExplainOptions(granularity="word", labels="all")
    predicted = explain_amortized(service.engine, explainer, encoded, [u[0] for u in unmasked], words)
    spearman = []
    for text, p in zip(encoded, predicted, strict=True):
        label = max(p.model_output, key=p.model_output.get)
        example = by_text[text.ids.tobytes()]
        labelled, inside = np.zeros(len(p.values[label])), example.words >= 0
        np.add.at(labelled, example.words[inside], example.values[inside, service.model.labels.index(label)])
        rank, _ = ranking_agreement(labelled, p.values[label])
        if rank is not None:
            spearman.append(rank)
    return round(float(np.median(spearman)), 4) if spearman else None


def _validate(service: Any, explainer: Any, texts: list[str], options: ExplainOptions) -> dict[str, float]:
    """Held-out figures at word granularity, for each text's predicted label: Spearman and top-5
    overlap of the artifact's values against exact's, and both rankings' comprehensiveness."""
    from shared.analysis.agreement import ranking_agreement
    from shared.explanation.amortized import explain_amortized
    from shared.explanation.explainer import explain_encoded, faithfulness_of
    from shared.serving.classifier import run_unmasked

    engine, model = service.engine, service.model
    encoded = model.encode(texts)
    unmasked = run_unmasked(engine, encoded)
    exact = explain_encoded(
        engine, encoded, options.model_copy(update={"faithfulness": True}), None, unmasked
    )
    predicted = explain_amortized(engine, explainer, encoded, [u[0] for u in unmasked], options)
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
