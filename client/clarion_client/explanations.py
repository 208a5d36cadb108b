"""Served explanations as `shap.Explanation` objects, so that shap.plots.text and shap.plots.bar
draw what a Clarion server returned.

What a result becomes, field by field, is what shap's Partition explainer builds for a text with a
Text masker: `values` per unit and per explained label, `base_values` per label, `output_names` the
labels, `feature_names` the units, and `data` each unit's piece of the text with the whitespace that
follows it (as `Text.token_segments` cuts the text: joined, the pieces read as the text, and
shap.plots.text shows it spaced as it was written; a boundary token such as [CLS] is an empty piece).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import shap


@dataclass(frozen=True)
class _Row:
    """One text's explanation as arrays."""

    labels: list[str]
    units: list[str]
    pieces: np.ndarray  # (units,) each unit's piece of the text
    values: np.ndarray  # (units, labels)
    base_values: np.ndarray  # (labels,)


def shap_explanation(
    results: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    texts: str | Sequence[str | None] | None = None,
) -> shap.Explanation:
    """One text's result (a dict) as an Explanation of shape (units, labels), like `explanation[i]`
    of shap's own; a list of results as one Explanation of shape (texts, None, labels), the ragged
    rows shap's Partition explainer returns for a list of texts (`[i]` is a text, `[:, :, label]`
    a label, `.mean(0)` averages by unit name). Every result of a list must explain the same labels.

    A result is an /invocations answer with explain (`Clarion.explain`), a job's result, or a line
    of `clarion explain`'s output or an analysis's records.jsonl (whose "text" is used). `texts` are
    the texts as sent; without them each text is rebuilt from its units and offsets, with a space
    wherever the units were apart (exact for text spaced by single spaces)."""
    shap = _shap()
    if isinstance(results, Mapping):
        if texts is not None and not isinstance(texts, str):
            raise TypeError("one result goes with one text (a str)")
        row = _row(results, texts)
        return shap.Explanation(
            row.values,
            base_values=row.base_values,
            data=row.pieces,
            feature_names=row.units,
            output_names=row.labels,
        )
    if isinstance(texts, str):
        raise TypeError("a list of results goes with a list of texts")
    given = list(texts) if texts is not None else [None] * len(results)
    if len(given) != len(results):
        raise ValueError(f"{len(results)} results but {len(given)} texts")
    rows = [_row(result, text) for result, text in zip(results, given, strict=True)]
    if not rows:
        raise ValueError("no results to convert")
    labels = rows[0].labels
    differing = [i for i, row in enumerate(rows) if row.labels != labels]
    if differing:
        raise ValueError(
            f"result {differing[0]} explains {rows[differing[0]].labels}, result 0 {labels}: one "
            "Explanation needs the same labels in every row (ask for labels 'all' or a list of names, "
            "or convert each result on its own)"
        )
    return shap.Explanation(
        _packed([row.values for row in rows]),
        base_values=np.array([row.base_values for row in rows]),
        data=_packed([row.pieces for row in rows]),
        feature_names=[row.units for row in rows],
        output_names=labels,
    )


def text_pieces(text: str | None, units: Sequence[str], offsets: Sequence[Sequence[int]]) -> list[str]:
    """Each unit's piece of the text: from its start to the next unit's start (its own end at
    least; the last unit, to its end), as shap's Text masker cuts a text into token segments."""
    source = text if text is not None else _rebuilt_text(units, offsets)
    for unit, (start, end) in zip(units, offsets, strict=True):
        if end > start and source[start:end] != unit:
            raise ValueError(
                f"the text does not hold the unit {unit!r} at [{start}, {end}): pass each result's "
                "own text, as it was sent"
            )
    stops = [max(end, following[0]) for (_, end), following in pairwise(offsets)]
    stops.append(offsets[-1][1] if offsets else 0)
    return [source[start:stop] for (start, _), stop in zip(offsets, stops, strict=True)]


def _row(result: Mapping[str, Any], text: str | None) -> _Row:
    pairs, base_values = result.get("explanation"), result.get("base_values")
    if not pairs or not base_values:
        reason = f" ({result['error'].get('message')})" if isinstance(result.get("error"), dict) else ""
        raise ValueError(f"this result holds no explanation{reason}: ask with explain")
    labels = list(base_values)
    units = [unit for unit, _ in pairs]
    offsets = result.get("offsets") or []
    if len(offsets) != len(units):
        raise ValueError("this result lacks its units' offsets (every Clarion result has them)")
    pieces = text_pieces(text if text is not None else result.get("text"), units, offsets)
    return _Row(
        labels=labels,
        units=units,
        pieces=np.array(pieces, dtype=object),
        values=np.array([[values[label] for label in labels] for _, values in pairs], dtype=float),
        base_values=np.array([base_values[label] for label in labels], dtype=float),
    )


def _rebuilt_text(units: Sequence[str], offsets: Sequence[Sequence[int]]) -> str:
    """The text as far as the units tell it: each unit (a slice of the text) at its offsets, spaces
    between; a boundary token (an empty span) is not in the text."""
    characters = [" "] * max((end for _, end in offsets), default=0)
    for unit, (start, end) in zip(units, offsets, strict=True):
        if end - start == len(unit):
            characters[start:end] = unit
    return "".join(characters)


def _packed(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of equal length as one array, others as an array of arrays: shap's pack_values."""
    if len({len(row) for row in rows}) == 1:
        return np.array(rows)
    packed = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):  # one by one: numpy would try to broadcast a list of them
        packed[i] = row
    return packed


def _shap() -> Any:
    try:
        import shap
    except ImportError:
        raise ImportError(
            "shap_explanation needs shap, which the Clarion client itself does not: pip install shap"
        ) from None
    return shap
