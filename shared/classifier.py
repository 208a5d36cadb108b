"""Classify a batch of texts: every label scored, sorted by score, truncation reported."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.engine import CLASSIFY, Engine, Ticket
from shared.model import EncodedText
from shared.results import Classification, LabelScore


def classify_encoded(
    engine: Engine, encoded: Sequence[EncodedText], ticket: Ticket | None = None
) -> list[Classification]:
    """Score already-encoded texts; their rows go first in the engine's next pass."""
    if not encoded:
        return []
    logits = engine.run([e.ids for e in encoded], CLASSIFY, "exact", ticket or Ticket())
    scores = engine.model.outputs(logits, "probability")
    labels = engine.model.labels
    return [_classification(labels, row, e.truncated) for row, e in zip(scores, encoded, strict=True)]


def classify(engine: Engine, texts: Sequence[str], ticket: Ticket | None = None) -> list[Classification]:
    return classify_encoded(engine, engine.model.encode(texts), ticket)


def _classification(labels: list[str], scores: np.ndarray, truncated: bool) -> Classification:
    order = np.argsort(-scores, kind="stable")
    return Classification(
        prediction=[LabelScore(label=labels[i], score=float(scores[i])) for i in order],
        truncated=truncated,
    )
