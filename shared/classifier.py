"""Classify a batch of texts: every label scored, sorted by score, truncation reported."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.engine import CLASSIFY, Engine, Ticket
from shared.model import EncodedText, LongText
from shared.results import Classification, LabelScore


def classify_encoded(
    engine: Engine, encoded: Sequence[EncodedText], ticket: Ticket | None = None
) -> list[Classification]:
    """Score already-encoded texts; their rows go first in the engine's next pass."""
    if not encoded:
        return []
    model = engine.model
    rows_of = [e.rows(e.ids) for e in encoded]  # a windowed document: one row per window
    logits = engine.run([row for rows in rows_of for row in rows], CLASSIFY, "exact", ticket or Ticket())
    results, start = [], 0
    for e, rows in zip(encoded, rows_of, strict=True):
        scores = model.document_outputs(e, logits[start : start + len(rows)], "probability")
        results.append(_classification(model.labels, scores, e.truncated))
        start += len(rows)
    return results


def classify(
    engine: Engine, texts: Sequence[str], ticket: Ticket | None = None, long_text: LongText = "truncate"
) -> list[Classification]:
    return classify_encoded(engine, engine.model.encode(texts, long_text), ticket)


def _classification(labels: list[str], scores: np.ndarray, truncated: bool) -> Classification:
    order = np.argsort(-scores, kind="stable")
    return Classification(
        prediction=[LabelScore(label=labels[i], score=float(scores[i])) for i in order],
        truncated=truncated,
    )
