"""How a mask over a text's tokens becomes a model row: SHAP's Text masker, in its two modes.

- "tokens": each masked token's id is replaced by the mask token's id (SHAP's
  `Text(tokenizer, output_type="token_ids")`). Every row keeps the text's length and tokenization.
- "text": the text is rebuilt with each masked token's substring replaced by " " + the mask token
  string, whitespace collapsed, and tokenized again (SHAP's default `output_type="string"`, which is
  what the seed's `shap.Explainer(pipeline)` runs: its pipeline re-tokenizes every masked string).
  Re-tokenizing changes the rows: "[MASK]I" can split differently from "I", and rows vary in length.

Both follow shap 0.51's `shap.maskers.Text.__call__` line by line (MIT licence); tests check the
numbers against SHAP itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# SHAP turns "▁" back into a space in masked strings for these tokenizer classes (by name, as
# shap.utils.transformers.SENTENCEPIECE_TOKENIZERS lists them).
_SENTENCEPIECE_CLASSES = ("MarianTokenizer", "T5Tokenizer", "XLNetTokenizer", "AlbertTokenizer")
_WHITESPACE = re.compile(r"[\s]+")


@dataclass(frozen=True)
class TextMask:
    """What SHAP's string-mode Text masker needs to know about a tokenizer."""

    mask_token: str  # the tokenizer's mask token, else "..."
    collapse: bool  # one mask string for a run of masked tokens: only with "..." (SHAP's "auto")
    sep_token: str | None  # a segment equal to it is never masked (SHAP's rule)
    sentencepiece: bool  # "▁" in the masked string becomes a space

    @classmethod
    def of(cls, tokenizer: Any) -> TextMask:
        import transformers

        own = getattr(tokenizer, "mask_token", None)
        classes = tuple(c for c in (getattr(transformers, n, None) for n in _SENTENCEPIECE_CLASSES) if c)
        return cls(
            mask_token=own if own is not None else "...",
            collapse=own is None,
            sep_token=getattr(tokenizer, "sep_token", None),
            sentencepiece=isinstance(tokenizer, classes),
        )

    def masked_text(self, segments: Sequence[str], present: np.ndarray) -> str:
        """The text SHAP builds for one mask (`present`: True where a token is kept)."""
        parts: list[str] = []
        after_mask = False
        for segment, kept in zip(segments, present, strict=True):
            if kept or segment == self.sep_token:
                parts.append(segment)
                after_mask = False
            elif not (self.collapse and after_mask):
                parts.append(" " + self.mask_token)
                after_mask = True
        out = "".join(parts)
        if self.sentencepiece:
            out = out.replace("▁", " ")
        return _WHITESPACE.sub(" ", out).strip()


def token_segments(text: str, offsets: Sequence[tuple[int, int]]) -> list[str]:
    """The substring each token stands for, trailing whitespace included (as SHAP's Text masker)."""
    parts = [text[offsets[i][0] : max(offsets[i][1], offsets[i + 1][0])] for i in range(len(offsets) - 1)]
    parts.append(text[offsets[-1][0] : offsets[-1][1]])
    return parts
