"""What a request classifies: one text, a text pair (NLI, cross-encoders), or one text against labels
chosen per request (zero-shot, through an NLI model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# transformers' ZeroShotClassificationPipeline's default hypothesis
DEFAULT_HYPOTHESIS = "This example is {}."


@dataclass(frozen=True)
class TextPair:
    """Two texts classified together (NLI, cross-encoders, paraphrase): transformers' pipeline
    input {"text": ..., "text_pair": ...}."""

    text: str
    text_pair: str


@dataclass(frozen=True)
class ZeroShot:
    """A text scored against candidate labels as transformers' zero-shot-classification pipeline
    scores it: each label's hypothesis (the template filled with it) as entailed by the text."""

    text: str
    candidate_labels: tuple[str, ...]
    hypothesis_template: str = DEFAULT_HYPOTHESIS
    multi_label: bool = False

    @property
    def hypotheses(self) -> list[str]:
        return [self.hypothesis_template.format(label) for label in self.candidate_labels]


Input = str | TextPair | ZeroShot  # what a request classifies


def input_key(item: Input) -> str | list[str]:
    """What a cache key holds of an input: the text, or everything that makes its answer (both
    texts of a pair; a zero-shot text's labels, template and mode), never the first text alone."""
    if isinstance(item, TextPair):
        return [item.text, item.text_pair]
    if isinstance(item, ZeroShot):
        mode = "zero-shot-multi" if item.multi_label else "zero-shot"
        return [mode, item.text, item.hypothesis_template, *item.candidate_labels]
    return item


def stored(item: Input) -> str | dict[str, Any]:
    """An input as JSON keeps it (a job's record and task): a text as itself, a pair and a zero-shot
    text as objects with everything that makes their answer."""
    if isinstance(item, TextPair):
        return {"text": item.text, "text_pair": item.text_pair}
    if isinstance(item, ZeroShot):
        return {
            "text": item.text,
            "candidate_labels": list(item.candidate_labels),
            "hypothesis_template": item.hypothesis_template,
            "multi_label": item.multi_label,
        }
    return item


def as_record(item: Input) -> dict[str, Any]:
    """An input as an output line holds it (`clarion explain`, an analysis's records.jsonl): its
    `text`, and a pair's `text_pair` beside it."""
    value = stored(item)
    return value if isinstance(value, dict) else {"text": value}


def restored(value: str | dict[str, Any]) -> Input:
    """The input `stored` kept."""
    if isinstance(value, str):
        return value
    if "text_pair" in value:
        return TextPair(value["text"], value["text_pair"])
    return ZeroShot(
        value["text"], tuple(value["candidate_labels"]), value["hypothesis_template"], value["multi_label"]
    )


def zero_shot_fields(parameters: dict[str, Any]) -> dict[str, Any]:
    """A zero-shot run's labels, template and mode, as its analysis document states them (its
    labels are these): `{"zero_shot": {...}}`, or nothing for a run without candidate labels."""
    if parameters.get("candidate_labels") is None:
        return {}
    return {
        "zero_shot": {
            "candidate_labels": parameters["candidate_labels"],
            "hypothesis_template": parameters.get("hypothesis_template") or DEFAULT_HYPOTHESIS,
            "multi_label": parameters.get("multi_label", False),
        }
    }
