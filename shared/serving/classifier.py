"""Classify texts: every label scored, sorted by score, truncation reported."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.io.inputs import Input
from shared.io.results import Classification, LabelScore
from shared.kinds import LongText
from shared.runtime.encoding import EncodedText
from shared.runtime.engine import CLASSIFY, Engine, Ticket
from shared.runtime.model import TextModel


def run_unmasked(
    engine: Engine, encoded: Sequence[EncodedText], ticket: Ticket | None = None
) -> list[np.ndarray]:
    """The logits of each text's rows as it is (one row, or a windowed document's windows), in one
    submission whose rows go first in the engine's next pass."""
    if not encoded:
        return []
    rows_of = [e.rows(e.ids) for e in encoded]
    logits = engine.run([row for rows in rows_of for row in rows], CLASSIFY, "exact", ticket or Ticket())
    out, start = [], 0
    for rows in rows_of:
        out.append(logits[start : start + len(rows)])
        start += len(rows)
    return out


def classification_of(model: TextModel, encoded: EncodedText, logits: np.ndarray) -> Classification:
    """A text's classification from the logits of its rows."""
    scores = model.document_outputs(encoded, logits, "probability")
    order = np.argsort(-scores, kind="stable")
    return Classification(
        prediction=[LabelScore(label=model.labels_of(encoded)[i], score=float(scores[i])) for i in order],
        truncated=encoded.truncated,
        **({"truncated_texts": list(encoded.truncated_texts)} if encoded.text_pair is not None else {}),
    )


def classify_encoded(
    engine: Engine, encoded: Sequence[EncodedText], ticket: Ticket | None = None
) -> list[Classification]:
    """Score already-encoded texts."""
    logits = run_unmasked(engine, encoded, ticket)
    return [classification_of(engine.model, e, rows) for e, rows in zip(encoded, logits, strict=True)]


def classify(
    engine: Engine, texts: Sequence[Input], ticket: Ticket | None = None, long_text: LongText = "truncate"
) -> list[Classification]:
    return classify_encoded(engine, engine.model.encode(texts, long_text), ticket)
