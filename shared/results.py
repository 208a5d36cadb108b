"""Plain result objects returned by the classifier and the explainer, and their JSON shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score}


@dataclass(frozen=True)
class Classification:
    """Every label's score for one text, highest first."""

    scores: list[LabelScore]
    truncated: bool

    @property
    def top_label(self) -> str:
        return self.scores[0].label

    def to_dict(self) -> dict[str, Any]:
        return {"prediction": [s.to_dict() for s in self.scores], "truncated": self.truncated}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Classification:
        scores = [LabelScore(str(s["label"]), float(s["score"])) for s in data["prediction"]]
        return cls(scores=scores, truncated=bool(data["truncated"]))


@dataclass(frozen=True)
class Explanation:
    """SHAP attributions for one text: per token, per explained label.

    `base_values[label] + sum(values[label])` reproduces `model_output[label]` (additivity).
    """

    tokens: list[str]
    offsets: list[tuple[int, int]]
    labels: list[str]
    values: dict[str, list[float]]
    base_values: dict[str, float]
    model_output: dict[str, float]
    output: str
    max_evals: int
    evaluations: int
    seed: int
    precision: str
    truncated: bool
    batch_size: int | None = None  # SHAP's batch size (None only in entries from before it was recorded)

    def seed_pairs(self) -> list[list[Any]]:
        """The seed's shape: `[[token, {label: value, ...}], ...]`."""
        return [
            [token, {label: self.values[label][i] for label in self.labels}]
            for i, token in enumerate(self.tokens)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "offsets": [list(o) for o in self.offsets],
            "labels": self.labels,
            "values": self.values,
            "base_values": self.base_values,
            "model_output": self.model_output,
            "output": self.output,
            "max_evals": self.max_evals,
            "evaluations": self.evaluations,
            "seed": self.seed,
            "precision": self.precision,
            "truncated": self.truncated,
            "batch_size": self.batch_size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        return cls(
            tokens=list(data["tokens"]),
            offsets=[(int(a), int(b)) for a, b in data["offsets"]],
            labels=list(data["labels"]),
            values={k: [float(x) for x in v] for k, v in data["values"].items()},
            base_values={k: float(v) for k, v in data["base_values"].items()},
            model_output={k: float(v) for k, v in data["model_output"].items()},
            output=str(data["output"]),
            max_evals=int(data["max_evals"]),
            evaluations=int(data["evaluations"]),
            seed=int(data["seed"]),
            precision=str(data["precision"]),
            truncated=bool(data["truncated"]),
            batch_size=None if data.get("batch_size") is None else int(data["batch_size"]),
        )


def text_response(
    classification: Classification, explanation: Explanation | None, model_id: str
) -> dict[str, Any]:
    """One text's response: the seed's fields (`prediction`, `explanation`) first, richer ones beside."""
    body = classification.to_dict()
    body["model"] = model_id
    if explanation is not None:
        body["explanation"] = explanation.seed_pairs()
        body["offsets"] = [list(o) for o in explanation.offsets]
        body["base_values"] = explanation.base_values
        body["model_output"] = explanation.model_output
        body["explanation_parameters"] = {
            "output": explanation.output,
            "max_evals": explanation.max_evals,
            "evaluations": explanation.evaluations,
            "seed": explanation.seed,
            "precision": explanation.precision,
            "batch_size": explanation.batch_size,
        }
    return body
