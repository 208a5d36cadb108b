"""What a request classifies: one text, a text pair (NLI, cross-encoders), or one text against labels
chosen per request (zero-shot, through an NLI model)."""

from __future__ import annotations

from dataclasses import dataclass

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
