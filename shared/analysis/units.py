"""Which units count as one across a dataset: "Film", "film" and "film," are one word to a reader."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

NORMALIZATIONS = ("case", "punctuation")
# The grammar of a normalize spec, as the parser reads it and the OpenAPI document states it.
_ONE = "(?:" + "|".join(NORMALIZATIONS) + ")"
NORMALIZE_PATTERN = rf"^\s*(?:none|{_ONE}(?:\s*,\s*{_ONE})*)\s*$"


@dataclass(frozen=True)
class Normalizer:
    """Case-folds and trims punctuation (and symbols) at both ends of a unit, as asked. A unit that
    is punctuation alone ("!!!", ",") keeps its text: trimmed, it would be nothing."""

    casefold: bool = True
    trim_punctuation: bool = True

    @classmethod
    def parse(cls, spec: str) -> Normalizer:
        """ "case,punctuation" (the default), "case", "punctuation" or "none"."""
        if not re.fullmatch(NORMALIZE_PATTERN, spec):
            raise ValueError(f"normalize: {spec!r}; use none or a comma-separated subset of {NORMALIZATIONS}")
        parts = {p.strip() for p in spec.split(",")}
        return cls("case" in parts, "punctuation" in parts)

    @property
    def spec(self) -> str:
        parts = [
            name
            for name, on in zip(NORMALIZATIONS, (self.casefold, self.trim_punctuation), strict=True)
            if on
        ]
        return ",".join(parts) or "none"

    def __call__(self, unit: str) -> str:
        text = " ".join(unit.split())  # a sentence or paragraph unit: its whitespace as one space
        if self.trim_punctuation:
            start, end = 0, len(text)
            while start < end and _is_punctuation(text[start]):
                start += 1
            while end > start and _is_punctuation(text[end - 1]):
                end -= 1
            text = text[start:end] or text
        return text.casefold() if self.casefold else text


def _is_punctuation(character: str) -> bool:
    return unicodedata.category(character)[0] in "PS"
