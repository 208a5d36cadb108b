"""Classify a batch of texts: every label scored, sorted by score, truncation reported."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.model import EncodedText, TextModel
from shared.results import Classification, LabelScore


def classify_encoded(
    model: TextModel, encoded: Sequence[EncodedText], batch_size: int
) -> list[Classification]:
    """One batched forward pass (per `batch_size` rows) over already-encoded texts."""
    if not encoded:
        return []
    scores = model.outputs(model.logits([e.ids for e in encoded], batch_size), "probability")
    return [_classification(model.labels, row, e.truncated) for row, e in zip(scores, encoded, strict=True)]


def classify(model: TextModel, texts: Sequence[str], batch_size: int) -> list[Classification]:
    return classify_encoded(model, model.encode(texts), batch_size)


def _classification(labels: list[str], scores: np.ndarray, truncated: bool) -> Classification:
    order = np.argsort(-scores, kind="stable")
    return Classification(
        scores=[LabelScore(labels[i], float(scores[i])) for i in order],
        truncated=truncated,
    )
