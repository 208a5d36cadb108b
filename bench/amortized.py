"""`python -m bench amortized`: distill the amortized explainer on SST-2 dev sentences (or take one
`clarion distill` made: `--artifact`), then measure it against exact on sentences it never saw:
per-text time (40 sentences in one request, and reviews), Spearman, top-5 overlap and
comprehensiveness at word granularity."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
    median,
    ratio,
    sst2_sentences,
    table,
    write_results,
)
from bench.explain import _long_texts

REPO = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", type=int, default=400, help="SST-2 dev sentences to distill on")
    parser.add_argument("--test", type=int, default=40, help="later SST-2 dev sentences, never trained on")
    parser.add_argument("--long", type=int, default=3, help="reviews of ~250-300 tokens")
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=8, help="distill's training epochs")
    parser.add_argument(
        "--artifact",
        help="an artifact `clarion distill` made for --model-dir (trained on none of the last --test)",
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also measure how well exact token values (the labels), summed per word, order the "
        "sentences' words as exact word values do: the most an explainer that learnt them could reach",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    from shared.serving.service import ClarionService
    from shared.settings import Settings

    if args.smoke:
        args.train, args.test, args.long, args.max_evals = 20, 4, 1, 40
    sentences = sst2_sentences()
    train, test = sentences[: args.train], sentences[len(sentences) - args.test :]
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        model_dir = args.model_dir
        if args.smoke:
            from tests.support import build_tiny_model

            model_dir = str(build_tiny_model(Path(tmp) / "tiny", labels=["negative", "positive"]))
        source, artifact = Path(tmp) / "train.txt", Path(args.artifact or Path(tmp) / "artifact")
        started = time.perf_counter()
        if not args.artifact:
            source.write_text("\n".join(train) + "\n")
            env = dict(os.environ, MODEL_DIR=model_dir, TORCH_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
            command = [sys.executable, "-m", "shared.cli", "distill", str(source), "--out", str(artifact)]
            options = ["--max-evals", str(args.max_evals), "--epochs", str(args.epochs)]
            subprocess.run([*command, *options], cwd=REPO, env=env, check=True)
        training_s = time.perf_counter() - started
        meta = json.loads((artifact / "amortized.json").read_text())
        settings = Settings(
            model_dir=model_dir,
            torch_threads=args.threads,
            amortized_explainer=str(artifact),
            amortized_min_spearman=-1.0,
            explanation_cache_size=0,
        )
        service = ClarionService(settings, threads=args.threads)
        service.load()
        try:
            # Reviews joined from sentences the artifact never saw: with --artifact (trained on all of
            # SST-2 dev but the last --test), from those last sentences.
            unseen = test if args.artifact else sentences[args.train : -args.test]
            reviews = _long_texts(service.model, unseen, args.long, (250, 300))
            results = {
                "sentences": _compare(service, test, args, batched=True),
                **({"reviews": _compare(service, reviews, args, batched=False)} if reviews else {}),
            }
            ceiling = _token_ceiling(service, test, args) if args.ceiling else None
        finally:
            service.stop()

    headers = [
        "texts",
        "n",
        "exact s/text",
        "amortized s/text",
        "speed-up",
        "Spearman",
        "top-5",
        "compr. amortized",
        "compr. exact",
    ]
    rows = [
        [
            name,
            str(r["texts"]),
            fmt(r["exact_s_per_text"], ".4f"),
            fmt(r["amortized_s_per_text"], ".4f"),
            fmt(r["speedup"], ".1f", "x"),
            fmt(r["spearman_median"], ".3f"),
            fmt(r["top5_overlap_median"], ".2f"),
            fmt(r["comprehensiveness_amortized"], ".3f"),
            fmt(r["comprehensiveness_exact"], ".3f"),
        ]
        for name, r in results.items()
    ]
    trained_on = (
        f"artifact {args.artifact} ({meta['trained_texts']} texts, {meta['training_seconds']} s of training)"
        if args.artifact
        else f"distilled on the first {args.train} SST-2 dev sentences (exact, token granularity, max_evals "
        f"{args.max_evals}, {args.epochs} epochs) in {training_s:.0f} s"
    )
    text = table(headers, rows) + (
        f"\n\n{trained_on}, held-out figures of the artifact: {meta['validation']}; "
        f"compared at word granularity on the last {args.test} dev sentences (one request) and on "
        f"reviews, the predicted label, {args.threads} threads; medians"
    )
    if ceiling:
        text += (
            f"\nexact token values summed per word against exact word values, on the same sentences: "
            f"Spearman {ceiling['spearman_median']:.3f}, top-5 {ceiling['top5_overlap_median']:.2f}"
        )
    data = {
        "config": vars(args),
        "environment": environment(),
        "training_s": training_s,
        "artifact": meta,
        "results": results,
        "token_ceiling": ceiling,
    }
    write_results(Path(args.out or DEFAULT_OUT), "amortized", data, text)
    print(text)
    return 0


def _compare(service: Any, texts: list[str], args: argparse.Namespace, batched: bool) -> dict[str, Any]:
    """Exact and amortized on the same texts (alternating which goes first): time and agreement."""
    from shared.analysis.agreement import ranking_agreement
    from shared.explanation.explainer import faithfulness_of
    from shared.io.schemas import ExplainOptions

    exact_options = ExplainOptions(
        max_evals=args.max_evals, granularity="word", labels="all", faithfulness=False
    )
    amortized_options = exact_options.model_copy(update={"precision": "amortized"})
    groups = [texts] if batched else [[t] for t in texts]
    spent = {"exact": 0.0, "amortized": 0.0}
    exact, amortized = [], []
    for i, group in enumerate(groups):
        for name, options in [("exact", exact_options), ("amortized", amortized_options)][
            :: 1 if i % 2 == 0 else -1
        ]:
            started = time.perf_counter()
            done = service.explain(group, options)
            spent[name] += time.perf_counter() - started
            (exact if name == "exact" else amortized).extend(done)
    spearman, overlap, values, labels = [], [], [], []
    for e, a in zip(exact, amortized, strict=True):
        label = max(e.model_output, key=e.model_output.get)
        x, y = np.array(e.values[label]), np.array(a.values[label])
        rank, top = ranking_agreement(x, y)
        if rank is not None:
            spearman.append(rank)
        overlap.append(top)
        index = service.model.labels.index(label)
        labels.append([index])
        values.append((x[:, None], y[:, None]))
    engine = service.engine
    exact_faith = faithfulness_of(engine, texts, exact_options, [v[0] for v in values], labels)
    amortized_faith = faithfulness_of(engine, texts, exact_options, [v[1] for v in values], labels)
    return {
        "texts": len(texts),
        "exact_s_per_text": spent["exact"] / len(texts),
        "amortized_s_per_text": spent["amortized"] / len(texts),
        "speedup": ratio(spent["exact"], spent["amortized"]),
        "spearman_median": median(spearman),
        "top5_overlap_median": median(overlap),
        "comprehensiveness_exact": float(
            np.mean([next(iter(m.values())).comprehensiveness for m in exact_faith])
        ),
        "comprehensiveness_amortized": float(
            np.mean([next(iter(m.values())).comprehensiveness for m in amortized_faith])
        ),
    }


def _token_ceiling(service: Any, texts: list[str], args: argparse.Namespace) -> dict[str, float]:
    """The sentences' exact token values (what distill labels) summed per word, against their exact
    word values: two games, SHAP's token tree and the word tree, so even a perfect learner of the
    labels orders the words only this well."""
    from shared.analysis.agreement import ranking_agreement
    from shared.explanation.explainer import new_game
    from shared.io.schemas import ExplainOptions

    words = ExplainOptions(max_evals=args.max_evals, granularity="word", labels="all", faithfulness=False)
    tokens = words.model_copy(update={"granularity": "token"})
    spearman, overlap = [], []
    encoded = service.model.encode(texts)
    exact_tokens, exact_words = service.explain(texts, tokens), service.explain(texts, words)
    for text, t, w in zip(encoded, exact_tokens, exact_words, strict=True):
        label = max(w.model_output, key=w.model_output.get)
        word_of = np.asarray(new_game(service.model, text, words).player_of_token)
        summed = np.zeros(len(w.values[label]))
        np.add.at(summed, word_of[word_of >= 0], np.asarray(t.values[label])[word_of >= 0])
        rank, top = ranking_agreement(w.values[label], summed)
        if rank is not None:
            spearman.append(rank)
        overlap.append(top)
    return {"spearman_median": median(spearman), "top5_overlap_median": median(overlap)}
