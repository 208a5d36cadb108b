"""SageMaker Clarify's online explainability format, so that a client written for a Clarify endpoint
works unchanged against Clarion.

Clarify answers `application/json`:
    {"version": "1.0",
     "predictions": {"content_type": "text/csv", "data": "<one CSV line of scores per record>"},
     "label_headers": [...],
     "explanations": {"kernel_shap": [<per record: null, or [{"feature_type": "text",
                                        "attributions": [{"attribution": [<one value per label>],
                                                          "description": {"partial_text", "start_idx"}}]},
                                        <a text pair's second text (Clarify's second feature column):
                                         a second such feature>]>]}}
`explanations` is `{}` when no record was explained. Which records are explained is decided per
request by the header `X-Amzn-SageMaker-Enable-Explanations`, a JMESPath expression evaluated against
each record's prediction: the list of its scores in `label_headers` order (as Clarify parses a CSV
prediction), so `[1]>\\`0.5\\`` explains records whose second label scores over 0.5.
The endpoint's ClarifyExplainerConfig becomes settings (CLARIFY_*): NumberOfSamples is max_evals,
UseLogit the logit output, Seed the seed, LabelHeaders the label names, Granularity the unit (Clarify's
"token" is a word: it splits text on spaces and punctuation, never into subword pieces).
"""

from __future__ import annotations

import logging
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import BaseModel, Field

from shared.errors import InvalidRequest
from shared.io.results import Classification, Explanation
from shared.settings import Settings

log = logging.getLogger(__name__)
ENABLE_HEADER = "X-Amzn-SageMaker-Enable-Explanations"
_GRANULARITY = {"token": "word", "sentence": "sentence", "paragraph": "paragraph"}


class ClarifyDescription(BaseModel):
    partial_text: str
    start_idx: int = Field(description="character offset of partial_text in the record's text")


class ClarifyAttribution(BaseModel):
    attribution: list[float] = Field(description="one value per label, in label_headers order")
    description: ClarifyDescription


class ClarifyFeature(BaseModel):
    feature_type: str = "text"
    attributions: list[ClarifyAttribution]


class ClarifyPredictions(BaseModel):
    content_type: str = "text/csv"
    data: str = Field(description="one CSV line per record: its scores in label_headers order")


class ClarifyResponse(BaseModel):
    """SageMaker Clarify's online explainability response."""

    version: str = "1.0"
    predictions: ClarifyPredictions
    label_headers: list[str]
    explanations: dict[str, list[list[ClarifyFeature] | None]] = Field(
        description='{"kernel_shap": [one entry per record, null when not explained]}, or {} when none was; '
        "an entry lists the record's text features: one, or a text pair's two (its text, then its text_pair)"
    )


def clarify_options(settings: Settings) -> dict[str, Any]:
    """Explanation options of a Clarify request: every label, from the endpoint's settings."""
    options: dict[str, Any] = {
        "explain": True,
        "labels": "all",
        "granularity": _GRANULARITY[settings.clarify_granularity],
        "output": "logit" if settings.clarify_use_logit else "probability",
        "seed": settings.clarify_seed,
    }
    if settings.clarify_num_samples is not None:
        options["max_evals"] = settings.clarify_num_samples
    return options


def scores_by_label(classification: Classification, labels: list[str]) -> list[float]:
    scores = {entry.label: entry.score for entry in classification.prediction}
    return [scores[label] for label in labels]


def records_to_explain(expression: str, scores: list[list[float]]) -> list[bool]:
    """Evaluate the Enable-Explanations expression against each record's scores."""
    try:
        compiled = jmespath.compile(expression)
    except JMESPathError as exc:
        raise InvalidRequest(f"{ENABLE_HEADER}: not a JMESPath expression: {_first_line(exc)}") from None
    wanted = []
    for record, row in enumerate(scores):
        try:
            value = compiled.search(row)
        except JMESPathError as exc:
            raise InvalidRequest(f"{ENABLE_HEADER}: record {record}: {_first_line(exc)}") from None
        if not isinstance(value, bool):
            raise InvalidRequest(
                f"{ENABLE_HEADER}: must give true or false for each record; record {record} gave {value!r}"
            )
        wanted.append(value)
    return wanted


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def label_headers(settings: Settings, labels: list[str]) -> list[str]:
    """CLARIFY_LABEL_HEADERS when it names every label, else the model's own names."""
    headers = list(settings.clarify_label_headers)
    if headers and len(headers) != len(labels):
        log.warning(
            "CLARIFY_LABEL_HEADERS has %d names for %d labels: using the model's", len(headers), len(labels)
        )
        return labels
    return headers or labels


def clarify_body(
    headers: list[str],
    labels: list[str],
    scores: list[list[float]],
    explanations: list[Explanation | None],
) -> dict[str, Any]:
    """The Clarify response for records with these scores (in `labels` order) and explanations."""
    data = "".join(",".join(f"{value:.7g}" for value in row) + "\n" for row in scores)
    kernel_shap = [None if e is None else _text_features(e, labels) for e in explanations]
    return {
        "version": "1.0",
        "predictions": {"content_type": "text/csv", "data": data},
        "label_headers": headers,
        "explanations": {"kernel_shap": kernel_shap} if any(k is not None for k in kernel_shap) else {},
    }


def _text_features(explanation: Explanation, labels: list[str]) -> list[dict[str, Any]]:
    """One text feature per text of the record, in its columns' order: a text pair's two texts are
    its two features, each with its own units (`start_idx` indexing into that text), as Clarify
    reports every feature of a record. Their attributions together add up to the prediction."""
    segments = explanation.segments or [0] * len(explanation.units)
    features = []
    for segment in sorted(set(segments)):
        attributions = [
            {
                "attribution": [explanation.values[label][i] for label in labels],
                "description": {"partial_text": unit, "start_idx": start},
            }
            for i, (unit, (start, end)) in enumerate(zip(explanation.units, explanation.offsets, strict=True))
            if end > start and segments[i] == segment  # boundary tokens ([CLS], [SEP]) are no part of a text
        ]
        features.append({"feature_type": "text", "attributions": attributions})
    return features
