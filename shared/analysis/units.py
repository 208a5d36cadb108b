"""Which units count as one across a dataset: "Film", "film" and "film," are one word to a reader."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

NORMALIZATIONS = ("case", "punctuation")


@dataclass(frozen=True)
class Normalizer:
    """Case-folds and trims punctuation (and symbols) at both ends of a unit, as asked. A unit that
    is punctuation alone ("!!!", ",") keeps its text: trimmed, it would be nothing."""

    casefold: bool = True
    trim_punctuation: bool = True

    @classmethod
    def parse(cls, spec: str) -> Normalizer:
        """ "case,punctuation" (the default), "case", "punctuation" or "none"."""
        parts = {p.strip() for p in spec.split(",") if p.strip()}
        if parts == {"none"}:
            return cls(False, False)
        unknown = parts - set(NORMALIZATIONS)
        if unknown or not parts:
            raise ValueError(f"normalize: {spec!r}; use none or a comma-separated subset of {NORMALIZATIONS}")
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
