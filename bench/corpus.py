"""`python -m bench corpus`: the unlabelled corpus the amortized explainer's published figures were
distilled on (docs/engine.md): SST-2 dev sentences, emotion validation texts, documents of 150-300
tokens joined from those sentences, so that the copy also learns long texts' word order, and those
sentences' clauses, more texts in the sentences' domain. None of the last 40 SST-2 dev sentences
(`bench amortized`'s unseen ones) is in it."""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from bench.common import DEFAULT_OUT, MINILM_DIR, TEAM_KIT, quiet_transformers, sst2_sentences, write_results

EMOTION_PATH = TEAM_KIT / "data" / "emotion-val.txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", help="where to write it, a text per line (default OUT/distill-corpus.txt)")
    parser.add_argument("--sst2", type=int, default=832, help="the first N SST-2 dev sentences")
    parser.add_argument("--emotion", type=int, default=1470, help="the first N emotion validation texts")
    parser.add_argument("--documents", type=int, default=200, help="documents joined from those sentences")
    parser.add_argument(
        "--clauses",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the clauses of those sentences (3 words or more) as texts of their own",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model-dir", default=str(MINILM_DIR), help="the tokenizer that counts tokens")


def documents(sentences: list[str], count: int, seed: int, tokens_of) -> list[str]:
    """`count` documents, each of random sentences (a fresh shuffle per pass over them) until a
    length drawn between 150 and 250 tokens is reached, never past 300 (specials included)."""
    rng = random.Random(seed)
    found: list[str] = []
    while len(found) < count:
        order = sentences[:]
        rng.shuffle(order)
        current, length, goal = [], 2, rng.randint(150, 250)
        for sentence in order:
            if len(found) >= count:
                break
            n = tokens_of(sentence)
            if length + n > 300:
                continue
            current.append(sentence)
            length += n
            if length >= goal:
                found.append(" ".join(current))
                current, length, goal = [], 2, rng.randint(150, 250)
    return found


# Where a sentence splits into clauses: commas, semicolons, colons and SST's double dashes.
_CLAUSE_BREAK = re.compile(r"\s*(?:[,;:]|--)\s*")


def clauses(sentences: list[str]) -> list[str]:
    """The clauses of 3 words or more of each sentence that has more than one clause, once each, in
    order: SST-2's own phrases are texts the classifier judges on their own, so each is another
    game to label, in the sentences' domain, at a fraction of a sentence's cost."""
    found: dict[str, None] = {}
    for sentence in sentences:
        parts = [p for p in _CLAUSE_BREAK.split(sentence) if p.strip()]
        if len(parts) > 1:
            found |= {p.strip(): None for p in parts if len(p.split()) >= 3}
    whole = set(sentences)
    return [c for c in found if c not in whole]


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    from transformers import AutoTokenizer

    if args.smoke:
        args.sst2, args.emotion, args.documents = 40, 10, 2
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    sentences = sst2_sentences(args.sst2)
    assert len(sst2_sentences()) - len(sentences) >= 40, "keep the last 40 sentences unseen"
    emotion = [line.rsplit(";", 1)[0] for line in EMOTION_PATH.read_text().splitlines()[1:]]

    def tokens_of(sentence: str) -> int:
        return len(tokenizer(sentence, add_special_tokens=False)["input_ids"])

    joined = documents(sentences, args.documents, args.seed, tokens_of)
    parts = clauses(sentences) if args.clauses else []
    # Clauses come last: a corpus that grows keeps its earlier lines, so their labels are reused.
    texts = [*sentences, *emotion[: args.emotion], *joined, *parts]
    out = Path(args.out or DEFAULT_OUT)
    path = Path(args.file or out / "distill-corpus.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    lengths = sorted(len(tokenizer(d)["input_ids"]) for d in joined)
    counts = {"file": str(path), "sentences": len(sentences), "emotion": args.emotion}
    counts["documents"] = len(joined)
    counts["document_tokens"] = [lengths[0], lengths[-1]] if lengths else None
    counts["clauses"] = len(parts)
    spread = f" of {lengths[0]}-{lengths[-1]} tokens" if lengths else ""
    text = (
        f"{path}: {len(sentences)} SST-2 dev sentences, {args.emotion} emotion texts, {len(joined)} "
        f"documents{spread}, {len(parts)} clauses (seed {args.seed})"
    )
    write_results(out, "corpus", counts, text)
    return 0
