"""What a request classifies: one text, or a text pair (NLI, cross-encoders)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextPair:
    """Two texts classified together (NLI, cross-encoders, paraphrase): transformers' pipeline
    input {"text": ..., "text_pair": ...}."""

    text: str
    text_pair: str


Input = str | TextPair  # what a request classifies: one text, or a pair


def input_key(item: Input) -> str | list[str]:
    """What a cache key holds of an input: the text, or both texts (never the first alone)."""
    return [item.text, item.text_pair] if isinstance(item, TextPair) else item
