"""The options a request may carry, named as the API names them (docs/api.md, docs/analysis.md).

The client forwards them as given and leaves every check to the server, the one authority on what a
deployment accepts (its limits, its model's labels): a wrong one is a `BadRequest` whose message
names it. Options left out (or None) take the server's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypedDict

Labels = Literal["all", "predicted"] | list[str]


class _Explanation(TypedDict, total=False):
    """What both a synchronous explanation or a job and an analysis take."""

    max_evals: int  # model evaluations per text (SHAP's max_evals); server default 500
    time_budget: float  # seconds of exact refinement (anytime values: "complete": false if it ran out)
    granularity: Literal["token", "word", "sentence", "paragraph"]  # the players: tokens or text units
    labels: Labels  # the labels explained (shap's outputs): "all", "predicted" or names
    output: Literal["probability", "logit"]  # explain the scores, or the raw logits
    seed: int  # SHAP's tie-breaking seed
    precision: Literal["exact", "fast", "amortized"]
    masking: Literal["tokens", "text"]  # "text": SHAP's string masker (the original project's numbers)
    long_text: Literal["truncate", "windows"]  # texts longer than the model
    faithfulness: bool  # also ERASER comprehensiveness and sufficiency per explained label


class ZeroShotOptions(TypedDict, total=False):
    """Zero-shot labels (an NLI model): score the texts on these labels."""

    candidate_labels: list[str]  # each label's hypothesis entailed by the text, as transformers' pipeline
    hypothesis_template: str  # with {} where the label goes; default "This example is {}."
    multi_label: bool  # each label on its own (entailment against contradiction)


class ExplainOptions(_Explanation, ZeroShotOptions, total=False):
    """The options of `explain` and `submit` (POST /invocations, POST /explanations)."""

    batch_size: int  # SHAP's batch size: tree nodes the Partition explainer expands per round


class AnalysisOptions(_Explanation, ZeroShotOptions, total=False):
    """The options of `analyze` (POST /analyses query parameters, `clarion analyze`'s names); with
    `candidate_labels` every text is scored against them (the global words come per candidate)."""

    text_field: str  # the records' text field or column (default "text")
    pair_field: str  # text pairs: each record's second text, a field or CSV column (none: single texts)
    label_field: str  # the true label's field or column
    delimiter: str  # a CSV body's delimiter (default ",")
    agg_method: Literal["mean_abs", "mean_sq", "median"]
    top_k: int  # units kept per label
    normalize: str  # "case,punctuation", "case", "punctuation" or "none"


def body_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that go into a JSON body: those given a value."""
    return {name: value for name, value in options.items() if value is not None}


def query_options(options: Mapping[str, Any]) -> dict[str, str]:
    """The options as query parameters: booleans as true/false, label lists comma-separated."""
    query = {}
    for name, value in body_options(options).items():
        if isinstance(value, bool):
            query[name] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            query[name] = ",".join(str(item) for item in value)
        else:
            query[name] = str(value)
    return query
