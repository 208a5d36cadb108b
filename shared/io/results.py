"""Result objects and response bodies (pydantic): what the classifier and the explainer return,
what job records and caches store, and every JSON body the API sends. `/openapi.json` is
generated from these same models, so the documented responses are the ones sent."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from shared.kinds import ExactBackend, FastBackend, Granularity, LongText, Masking, Output, Precision


class Result(BaseModel):
    # frozen: results are shared by caches; ignore: a record written by a newer version still reads.
    model_config = ConfigDict(frozen=True, extra="ignore")


class LabelScore(Result):
    label: str
    score: float


class Classification(Result):
    """Every label's score for one text, highest first."""

    prediction: list[LabelScore]
    truncated: bool = Field(description="the text was longer than the model's maximum length")
    truncated_texts: list[str] | None = Field(
        None, description='a text pair: which of its texts truncation shortened ("text", "text_pair")'
    )

    @property
    def top_label(self) -> str:
        return self.prediction[0].label


class Faithfulness(Result):
    """ERASER's measures of one label's ranking (AOPC over the top 1, 5, 10, 20 and 50 % of the units;
    shared/explanation/faithfulness.py)."""

    comprehensiveness: float = Field(
        description="mean drop in the label's score when its top units are deleted (higher is better)"
    )
    sufficiency: float = Field(
        description="mean drop in the label's score when only its top units are kept (lower is better)"
    )


class Explanation(Result):
    """SHAP attributions for one text: per unit (token, word, sentence or paragraph), per label.

    `base_values[label] + sum(values[label])` reproduces `model_output[label]` (additivity).
    """

    # Records and cache entries written before granularity existed call the units "tokens".
    units: list[str] = Field(validation_alias=AliasChoices("units", "tokens"))
    offsets: list[tuple[int, int]]
    segments: list[int] | None = None  # a text pair: each unit's text (0: text, 1: text_pair)
    granularity: Granularity = "token"
    long_text: LongText = "truncate"
    windows: int = 1  # the rows the model reads the text in: 1, or its windows
    window_tokens: int | None = None  # windowed documents: tokens per window
    windows_run: int | None = None  # windowed documents: window rows run, and reused from a same mask
    windows_memoised: int | None = None
    labels: list[str]
    values: dict[str, list[float]]
    base_values: dict[str, float]
    model_output: dict[str, float]
    output: str
    max_evals: int
    evaluations: int
    complete: bool | None = None  # time_budget given: False when it ended refinement early
    seed: int
    precision: str
    truncated: bool
    batch_size: int | None = None  # SHAP's batch size (None only in entries from before it was kept)
    masking: Masking = "tokens"
    faithfulness: dict[str, Faithfulness] | None = None  # per explained label, when asked for
    additivity_correction: float | None = None  # precision "amortized": the largest shift per token
    amortized_validation: dict[str, Any] | None = None  # precision "amortized": its artifact's figures
    model_fingerprint: str | None = None  # jobs: the model that classified and explained the text

    def unit_pairs(self) -> list[tuple[str, dict[str, float]]]:
        """The original project's shape: `[[unit, {label: value, ...}], ...]`."""
        values, labels = self.values, self.labels
        return [(unit, {label: values[label][i] for label in labels}) for i, unit in enumerate(self.units)]


class Prediction(Result):
    """One text's answer: its classification, and its explanation when one was asked for."""

    classification: Classification
    explanation: Explanation | None = None


class ExplanationParameters(Result):
    output: Output
    granularity: Granularity = "token"
    long_text: LongText = "truncate"
    windows: int = Field(1, description="the windows the model read the text in (1: one row)")
    window_tokens: int | None = Field(None, description='long_text "windows": tokens per window')
    windows_run: int | None = Field(None, description='long_text "windows": window rows run')
    windows_memoised: int | None = Field(
        None, description='long_text "windows": window rows whose ids were already run for this text'
    )
    max_evals: int
    evaluations: int = Field(description="model evaluations SHAP's algorithm counted")
    complete: bool | None = Field(
        None,
        description="time_budget given: false when the budget ended Owen's refinement before max_evals "
        "(the values are then SHAP's for max_evals = evaluations), true when it did not",
    )
    seed: int
    precision: Precision
    batch_size: int | None = Field(None, description="SHAP's batch size")
    masking: Masking = Field(
        "tokens", description="how masked tokens were masked: by id, or in the text then re-tokenized"
    )
    additivity_correction: float | None = Field(
        None,
        description='precision "amortized": the largest shift a token\'s predicted value got so that base '
        "value + sum of attributions = output (the residual spread equally over the tokens)",
    )
    amortized_validation: dict[str, Any] | None = Field(
        None, description='precision "amortized": the artifact\'s held-out figures against exact'
    )
    model_fingerprint: str | None = Field(
        None,
        description="jobs: the fingerprint of the model that classified and explained the text (a worker "
        "whose model differs from the one that classified it at submit classifies it again)",
    )


class TextResult(Result):
    """One text's response: the seed's fields (`prediction`, `explanation`) first, richer ones beside."""

    prediction: list[LabelScore]
    truncated: bool
    model: str
    explanation: list[tuple[str, dict[str, float]]] | None = Field(
        None,
        description="each unit (token, word, sentence or paragraph: see explanation_parameters."
        "granularity) with its attribution per explained label (when explained)",
    )
    offsets: list[tuple[int, int]] | None = Field(
        None, description="each unit's [start, end) in the text (a text pair: in its own text, see segments)"
    )
    segments: list[int] | None = Field(
        None,
        description="a text pair: each unit's text, 0 for text and 1 for text_pair (parallel to offsets)",
    )
    truncated_texts: list[str] | None = Field(
        None, description='a text pair: which of its texts truncation shortened ("text", "text_pair")'
    )
    base_values: dict[str, float] | None = None
    model_output: dict[str, float] | None = None
    explanation_parameters: ExplanationParameters | None = None
    faithfulness: dict[str, Faithfulness] | None = Field(
        None, description="per explained label, with the option faithfulness: true"
    )


def text_response(
    classification: Classification, explanation: Explanation | None, model_id: str
) -> TextResult:
    pair = (
        {"truncated_texts": classification.truncated_texts}
        if classification.truncated_texts is not None
        else {}
    )
    if explanation is None:
        return TextResult(
            prediction=classification.prediction, truncated=classification.truncated, model=model_id, **pair
        )
    return TextResult(
        prediction=classification.prediction,
        truncated=classification.truncated,
        model=model_id,
        explanation=explanation.unit_pairs(),
        offsets=explanation.offsets,
        **({"segments": explanation.segments} if explanation.segments is not None else {}),
        **pair,
        base_values=explanation.base_values,
        model_output=explanation.model_output,
        explanation_parameters=ExplanationParameters(
            **explanation.model_dump(include=_PARAMETERS, exclude_none=True), **_window_counts(explanation)
        ),
        **({"faithfulness": explanation.faithfulness} if explanation.faithfulness is not None else {}),
    )


# What explanation_parameters repeats of an explanation (the window counts only for windowed documents).
_PARAMETERS = {
    *("output", "granularity", "long_text", "windows", "max_evals", "evaluations", "complete", "seed"),
    *("precision", "batch_size", "masking", "additivity_correction", "amortized_validation"),
    "model_fingerprint",
}


def _window_counts(explanation: Explanation) -> dict[str, int]:
    """Only a windowed document has a window width and window rows run and memoised."""
    if explanation.windows_run is None:
        return {}
    return {
        "window_tokens": explanation.window_tokens or 0,
        "windows_run": explanation.windows_run,
        "windows_memoised": explanation.windows_memoised or 0,
    }


# The HTTP API's version: its major number changes only with a change that breaks clients (the
# clarion-client distribution checks it once per server, from /ping).
API_VERSION = "1.0"


class Health(Result):
    status: Literal["healthy", "loading", "failed"]
    api_version: str = Field(
        API_VERSION, description="the HTTP API's version; its major number breaks clients"
    )
    model: str | None = None
    labels: list[str] | None = None
    exact_backend: ExactBackend | None = Field(
        None, description="what runs exact passes (torch until an onnxruntime export is ready)"
    )
    amortized: dict[str, Any] | None = Field(
        None,
        description="AMORTIZED_EXPLAINER: its held-out validation figures, or why it was refused",
    )
    fast_backend: FastBackend | None = Field(
        None,
        description='what runs "fast" passes: the candidate measured fastest among those that keep '
        "exact's ranking (torch-half, onnxruntime-int8), or exact's own (torch, onnxruntime)",
    )
    fast: dict[str, Any] | None = Field(
        None,
        description='how "fast" was chosen: status (measuring, chosen, forced), the choice and why, '
        "and each candidate's measured speed-ups against exact (~24-token and long rows), Spearman "
        "and top-5 overlap",
    )
    predictor: dict[str, Any] | None = Field(
        None,
        description="a remote model (MODEL_URL): the predictor's URL, whether it is ready, and why not",
    )
    error: str | None = None


def body(model: BaseModel) -> dict[str, Any]:
    """A model as the JSON the API sends: optional fields that were never set are left out."""
    return model.model_dump(mode="json", exclude_unset=True)
