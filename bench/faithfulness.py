"""`python -m bench faithfulness`: ERASER faithfulness of Clarion's SHAP values against leave-one-out
and random rankings of the same units.

For the first N SST-2 dev sentences and each granularity (token, word), three rankings of the units
of each sentence, for its predicted label:
1. Clarion's exact SHAP values (`explain_texts` with `faithfulness=True`: its own measures);
2. leave-one-out: a unit's value is the drop in the label's probability when it alone is deleted;
3. random: a seeded random order of the units.
Each is measured the same way (`faithfulness_of`, the deletions Clarion's own measure makes): AOPC
comprehensiveness (higher is better) and AOPC sufficiency (lower is better) over the top 1, 5, 10,
20 and 50 % of the units, averaged over the sentences.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    mean,
    quiet_transformers,
    sst2_sentences,
    write_results,
)

GRANULARITIES = ("token", "word")
RANKINGS = ("exact SHAP", "leave-one-out", "random")
# --smoke: words the tiny test model's tokenizer knows (tests/support.py WORDS), no team kit needed
SMOKE_TEXTS = [
    "i loved this film , the acting was superb .",
    "it 's played in the most straight-faced fashion , with little humor to lighten things up .",
    "boring",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texts", type=int, default=100, help="SST-2 dev sentences (the first N)")
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--granularity", choices=(*GRANULARITIES, "both"), default="both")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))
    parser.add_argument("--seed", type=int, default=0, help="the random ranking's seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    if args.smoke:
        args.texts, args.max_evals = len(SMOKE_TEXTS), 60
    granularities = GRANULARITIES if args.granularity == "both" else (args.granularity,)
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        model_dir = _tiny_model(Path(tmp)) if args.smoke else Path(args.model_dir)
        texts = SMOKE_TEXTS if args.smoke else sst2_sentences(args.texts)
        engine = _engine(model_dir, args.threads)
        try:
            results = {g: _measure(engine, texts, g, args.max_evals, args.seed) for g in granularities}
        finally:
            engine.stop()
    data = {"config": vars(args), "environment": environment(), "granularity": results}
    text = "\n\n".join(_report(g, r, args) for g, r in results.items())
    write_results(Path(args.out or DEFAULT_OUT), "faithfulness", data, text)
    return 0


def _tiny_model(tmp: Path) -> Path:
    from tests.support import build_tiny_model

    return build_tiny_model(tmp / "tiny", ["NEGATIVE", "POSITIVE"])


def _engine(model_dir: Path, threads: int) -> Any:
    """The model and its engine, as a Clarion process runs them."""
    from shared.runtime.engine import Engine, pass_limits_for
    from shared.runtime.loading import load_text_model
    from shared.settings import Settings

    model = load_text_model(Settings(model_dir=str(model_dir), torch_threads=threads))
    return Engine(model, pass_limits_for(model))


def _measure(engine: Any, texts: list[str], granularity: str, max_evals: int, seed: int) -> dict[str, Any]:
    """The three rankings' measures on these texts at this granularity, per text and their means."""
    from shared.explanation.explainer import explain_texts, faithfulness_of, players_of
    from shared.io.schemas import ExplainOptions

    model = engine.model
    options = ExplainOptions(
        max_evals=max_evals, granularity=granularity, labels="predicted", faithfulness=True
    )
    started = time.perf_counter()
    explanations = explain_texts(engine, texts, options)
    seconds = {"exact SHAP": time.perf_counter() - started}
    labels = [e.labels[0] for e in explanations]
    label_indexes = [[model.labels.index(label)] for label in labels]
    measures = {"exact SHAP": _of_labels([e.faithfulness or {} for e in explanations], labels)}

    started = time.perf_counter()
    loo = _leave_one_out(engine, texts, options, [i for (i,) in label_indexes])
    measures["leave-one-out"] = _of_labels(
        faithfulness_of(engine, texts, options, loo, label_indexes), labels
    )
    seconds["leave-one-out"] = time.perf_counter() - started

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    shuffled = [rng.standard_normal((players, 1)) for players in players_of(engine, texts, options)]
    measures["random"] = _of_labels(faithfulness_of(engine, texts, options, shuffled, label_indexes), labels)
    seconds["random"] = time.perf_counter() - started

    return {
        "texts": len(texts),
        "median_units": float(np.median([len(e.units) for e in explanations])),
        "median_evaluations": float(np.median([e.evaluations for e in explanations])),
        "rankings": {
            name: {
                "comprehensiveness": mean([m.comprehensiveness for m in measures[name]]),
                "sufficiency": mean([m.sufficiency for m in measures[name]]),
                "seconds": seconds[name],
                "per_text": [m.model_dump() for m in measures[name]],
            }
            for name in RANKINGS
        },
    }


def _of_labels(measures: list[dict[str, Any]], labels: list[str]) -> list[Any]:
    """Each text's measure of its own label."""
    return [m[label] for m, label in zip(measures, labels, strict=True)]


def _leave_one_out(engine: Any, texts: list[str], options: Any, label_indexes: list[int]) -> list[np.ndarray]:
    """Each text's units x 1: the drop in the label's probability when that unit alone is deleted
    (its tokens removed, as the faithfulness deletions remove them); 0 for the boundary tokens that
    token granularity counts as players (never deleted, never ranked)."""
    from shared.explanation.explainer import new_game
    from shared.runtime.engine import EXPLAIN

    model = engine.model
    plans, rows = [], []
    for encoded in model.encode(texts, options.long_text):
        game = new_game(model, encoded, options)
        playing = ~game.keep & (game.player_of_token >= 0)
        units = np.unique(game.player_of_token[playing])
        documents = [encoded.rows(encoded.ids)]  # the whole text first
        for unit in units:
            kept = ~(playing & (game.player_of_token == unit))
            documents.append(encoded.rows_shortened(encoded.ids[kept]))
        spans = []
        for document in documents:
            spans.append((len(rows), len(rows) + len(document)))
            rows += document
        plans.append((encoded, game.players, units, spans))
    logits = engine.run(rows, EXPLAIN)

    values = []
    for (encoded, players, units, spans), label_index in zip(plans, label_indexes, strict=True):
        scores = [
            float(model.document_outputs(encoded, logits[start:end], "probability")[label_index])
            for start, end in spans
        ]
        value = np.zeros((players, 1))
        value[units, 0] = scores[0] - np.array(scores[1:])
        values.append(value)
    return values


def _report(granularity: str, result: dict[str, Any], args: argparse.Namespace) -> str:
    source = "tiny random model" if args.smoke else "SST-2 dev"
    lines = [
        f"granularity {granularity}: {result['texts']} texts ({source}), "
        f"predicted label, max_evals {args.max_evals}, median {fmt(result['median_units'], '.0f')} units, "
        f"median {fmt(result['median_evaluations'], '.0f')} evaluations",
        "",
        "| ranking | comprehensiveness AOPC (higher: better) | sufficiency AOPC (lower: better) | seconds |",
        "|---|---|---|---|",
    ]
    for name, r in result["rankings"].items():
        lines.append(
            f"| {name} | {fmt(r['comprehensiveness'], '.3f')} | {fmt(r['sufficiency'], '.3f')} | "
            f"{fmt(r['seconds'], '.1f')} |"
        )
    return "\n".join(lines)
