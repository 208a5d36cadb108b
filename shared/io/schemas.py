"""Request schemas (pydantic): the bodies Clarion accepts, validated against the settings' limits.

They are shared because the worker validates the same explanation options the API accepted, and
because they generate the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from shared.errors import InvalidRequest
from shared.io.inputs import DEFAULT_HYPOTHESIS, Input, TextPair, ZeroShot
from shared.kinds import GRANULARITIES, Granularity, LongText, Masking, Output, Precision
from shared.settings import Settings

# The characters str.strip() removes (str.isspace()), spelt out: ECMAScript's `\s`, which JSON-schema
# validators use, is a different set. A text needs one character outside them, or it is "empty".
WHITESPACE = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
NON_BLANK = f"[^{WHITESPACE}]"
TEXT_JSON_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "pattern": NON_BLANK,
    "description": "A text: at least one character that is not whitespace, valid Unicode (no lone "
    "surrogates), at most MAX_TEXT_CHARS characters (MAX_WINDOWED_TEXT_CHARS with long_text "
    '"windows").',
}
PAIR_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": TEXT_JSON_SCHEMA, "text_pair": TEXT_JSON_SCHEMA},
    "required": ["text", "text_pair"],
    "additionalProperties": False,
    "description": "A text pair (NLI, cross-encoders): classified together, with token types, as "
    'transformers\' pipeline classifies {"text", "text_pair"}.',
}
# In a list of inputs, a pair may also be [text, text_pair].
PAIR_LIST_JSON_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": TEXT_JSON_SCHEMA,
    "minItems": 2,
    "maxItems": 2,
}
INPUT_JSON_SCHEMA: dict[str, Any] = {"anyOf": [TEXT_JSON_SCHEMA, PAIR_JSON_SCHEMA, PAIR_LIST_JSON_SCHEMA]}
TEXTS_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        TEXT_JSON_SCHEMA,
        PAIR_JSON_SCHEMA,
        {"type": "array", "items": INPUT_JSON_SCHEMA, "minItems": 1},
    ],
    "description": "A text or a text pair, or a list of them (at least one, at most MAX_TEXTS_PER_REQUEST): "
    "a result for one, a list of results for a list.",
}
# Where a text pair cannot be served (records, analyses, jobs' files: one text per record), the
# answer says so rather than reading the first text alone (a JSON Lines record's text_pair was once
# dropped without a word).
PAIRS_UNSUPPORTED = (
    "text pairs (a text with a text_pair) are read from records only where the second text's field is "
    "named: pair_field on POST /analyses, --pair-field on clarion explain and clarion analyze; or send "
    'them to /invocations ({"data": {"text": ..., "text_pair": ...}} or JSON Lines records). Reading '
    "only the first text would answer another question"
)
PAIR_SHAPE = (
    'a text pair is {"text": <text>, "text_pair": <text>} (or, in a list of inputs, [<text>, <text>])'
)


def is_pair(item: Any) -> bool:
    """One input sent as a text pair: {"text": ..., "text_pair": ...}, or [text, text_pair] (an item
    of a list of inputs)."""
    if isinstance(item, dict):
        return "text_pair" in item
    return isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item)


def _as_pair(item: Any) -> Any:
    """A pair as sent, as a TextPair; anything else as it is (its type is checked after)."""
    if isinstance(item, dict):
        if set(item) != {"text", "text_pair"} or not all(isinstance(v, str) for v in item.values()):
            raise ValueError(PAIR_SHAPE)
        return TextPair(item["text"], item["text_pair"])
    if isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
        return TextPair(item[0], item[1])
    return item


def _read_pairs(value: Any) -> Any:
    """Texts and pairs: one input (a text, or a pair object), or a list of inputs."""
    if isinstance(value, list):
        return [_as_pair(item) for item in value]
    return _as_pair(value) if isinstance(value, dict) else value


# Validated as texts and TextPairs (the messages clients read: "text 0 is empty", ...); documented
# with the rules _check_texts enforces. api/openapi.py adds the limits of the settings it serves.
Texts = Annotated[
    str | TextPair | list[str | TextPair], BeforeValidator(_read_pairs), WithJsonSchema(TEXTS_JSON_SCHEMA)
]
LabelNames = Annotated[
    list[str], WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1})
]
# long_text "windows" explains units of the text, with the token masker: the rule of
# ExplainOptions._windows_need_text_units, as the two shapes an options object may take.
LONG_TEXT_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"properties": {"long_text": {"const": "truncate"}}},
        {
            "properties": {
                "long_text": {"const": "windows"},
                "granularity": {"enum": [g for g in GRANULARITIES if g != "token"]},
                "masking": {"const": "tokens"},
            },
            "required": ["long_text", "granularity"],
        },
    ]
}
DEFAULT_MAX_EVALS = 500
SHAP_TEXT_BATCH_SIZE = 5  # shap.maskers.Text's default_batch_size


def _whole_number(value: Any) -> Any:
    """A number without a fractional part is a JSON-schema integer, however it is written: 500.0 is
    500 (as JSON Schema and JavaScript read it); 500.5, "500" and true stay errors of the strict int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# On an integer option, after its constraints (so that they stay JSON-schema keywords): strict, but
# 500.0 is 500 (the document says "integer", and so is 500.0 there).
WholeNumber = BeforeValidator(_whole_number)


class _Strict(BaseModel):
    # strict: "500" is not an int and 1 is not a bool; forbid: a misspelt option is an error, not ignored.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ExplainOptions(_Strict):
    """How to explain: SHAP's Partition explainer parameters."""

    model_config = ConfigDict(json_schema_extra=LONG_TEXT_JSON_SCHEMA)

    max_evals: Annotated[
        int | None,
        Field(
            ge=4,
            validate_default=True,
            description=f"Model evaluations per text (SHAP's max_evals). Default: {DEFAULT_MAX_EVALS}, "
            "or MAX_EVALS_LIMIT when that is lower.",
        ),
        WholeNumber,
    ] = None
    output: Output = "probability"
    long_text: LongText = Field(
        "truncate",
        description='Texts longer than the model: "truncate" to its maximum length (flagged "truncated"), '
        'or "windows": the model reads overlapping windows and the document\'s scores are the mean of '
        "theirs (word, sentence or paragraph granularity; up to MAX_WINDOWED_TEXT_CHARS characters).",
    )
    granularity: Granularity = Field(
        "token",
        description="The players of the explanation: model tokens (SHAP's own), or words, sentences or "
        "paragraphs of the text, each masked as a whole and returned with its character span.",
    )
    labels: Literal["all", "predicted"] | LabelNames = Field(
        "all", description='"all", "predicted" or a list of the model\'s label names to explain.'
    )
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), WholeNumber] = 0
    precision: Precision = "exact"
    masking: Masking = Field(
        "tokens",
        description="How a token is masked: \"tokens\" replaces its id by the mask token's (SHAP's Text "
        'masker with output_type="token_ids"); "text" replaces its characters by the mask token string '
        "and tokenizes the masked text again (SHAP's default string masker: what "
        "shap.Explainer(pipeline) computes). Truncated texts only (no long_text windows).",
    )
    faithfulness: bool = Field(
        False,
        description="Also measure the explanation's faithfulness (ERASER comprehensiveness and "
        "sufficiency, AOPC over the top 1, 5, 10, 20 and 50 % of the units) for each explained label: "
        "one more batch of passes with those units deleted.",
    )
    batch_size: Annotated[
        int | None,
        Field(
            ge=1,
            validate_default=True,
            description="SHAP's batch size: how many tree nodes the Partition explainer expands per "
            "round. It decides which nodes a cut tree (max_evals below the exact count) expands, so "
            "it is part of the answer; it does not depend on the hardware. Default: EXPLAIN_BATCH_SIZE "
            "(5, SHAP's default for text).",
        ),
        WholeNumber,
    ] = None

    time_budget: Annotated[
        float | None,
        Field(
            gt=0,
            allow_inf_nan=False,
            description="Seconds (anytime values): Owen's refinement runs best first, as SHAP's does, and "
            "stops before a round that would end past this long after the request (a job: after it "
            "started); the answer then has complete: false and the values are SHAP's for max_evals = "
            "the evaluations reached. At most the request's own limit (SAGEMAKER_MODEL_SERVER_TIMEOUT; "
            "jobs: JOB_SOFT_TIME_LIMIT). Without it, work past the limit is a 503.",
        ),
    ] = None

    @field_validator("time_budget")
    @classmethod
    def _budget_within_limits(cls, value: float | None, info: ValidationInfo) -> float | None:
        settings = _operator_settings(info)
        if value is None or settings is None:
            return value
        limit = settings.time_budget_limit_s
        if value > limit:
            raise ValueError(f"time_budget must be <= {limit} (seconds)")
        return value

    @field_validator("batch_size")
    @classmethod
    def _default_batch_size(cls, value: int | None, info: ValidationInfo) -> int:
        settings = _operator_settings(info)
        if settings is None:  # built in code (tests, a warm-up): SHAP's default, no operator limit
            return SHAP_TEXT_BATCH_SIZE if value is None else value
        if value is None:
            return settings.explain_batch_size
        if value > settings.explain_batch_size_limit:
            raise ValueError(f"batch_size must be <= {settings.explain_batch_size_limit}")
        return value

    @field_validator("max_evals")
    @classmethod
    def _cap_max_evals(cls, value: int | None, info: ValidationInfo) -> int:
        settings = _operator_settings(info)
        if settings is None:  # built in code: the documented default, no operator limit
            return DEFAULT_MAX_EVALS if value is None else value
        limit = settings.max_evals_limit
        if value is None:  # the default, within the operator's limit (checked here, not by the worker)
            return min(DEFAULT_MAX_EVALS, limit)
        if value > limit:
            raise ValueError(f"max_evals must be <= {limit}")
        return value

    @field_validator("labels")
    @classmethod
    def _non_empty_labels(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError('labels must be "all", "predicted" or a non-empty list of label names')
        return value

    @model_validator(mode="after")
    def _windows_need_text_units(self) -> ExplainOptions:
        if self.long_text == "windows" and self.granularity == "token":
            raise ValueError(
                'long_text "windows" explains words, sentences or paragraphs: set granularity to one of them'
            )
        if self.long_text == "windows" and self.masking == "text":
            raise ValueError('masking "text" tokenizes each masked text as one row: no long_text "windows"')
        return self

    def cache_key(self) -> tuple[Any, ...]:
        labels = tuple(self.labels) if isinstance(self.labels, list) else self.labels
        return (
            self.max_evals,
            self.output,
            labels,
            self.seed,
            self.precision,
            self.batch_size,
            self.granularity,
            self.long_text,
            self.masking,
            self.faithfulness,
        )


def _operator_settings(info: ValidationInfo) -> Settings | None:
    """The settings a request is validated against (parse_model passes them); None for options
    built in code."""
    settings = (info.context or {}).get("settings")
    return settings if isinstance(settings, Settings) else None


def _settings(info: ValidationInfo) -> Settings:
    """The settings a request body is validated against: bodies come from clients, so their limits
    always apply, and validating one without them is a programming error, never a silent default."""
    settings = _operator_settings(info)
    if settings is None:
        raise TypeError(
            "a request body is validated with its settings: use parse_model(schema, data, settings)"
        )
    return settings


def _inputs(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _texts_of(item: Any) -> tuple[str, ...]:
    """An input's texts: a pair's two in turn."""
    return (item.text, item.text_pair) if isinstance(item, TextPair) else (item,)


def _check_texts(value: Texts, info: ValidationInfo) -> Texts:
    settings = _settings(info)
    inputs = _inputs(value)
    if not inputs:
        raise ValueError("must contain at least one text")
    if len(inputs) > settings.max_texts:
        raise ValueError(f"at most {settings.max_texts} texts per request")
    limit = max(settings.max_text_chars, settings.max_windowed_text_chars)
    for i, item in enumerate(inputs):
        for text in _texts_of(item):
            if not _is_unicode(text):  # JSON can carry "\ud800"; the tokenizer cannot encode it
                raise ValueError(f"text {i} is not valid Unicode: it holds a lone surrogate (U+D800-U+DFFF)")
            if not text.strip():
                raise ValueError(f"text {i} is empty")
            if len(text) > limit:  # the limit of the texts' mode is checked once the options are known
                raise ValueError(f"text {i} has {len(text)} characters; the limit is {limit}")
    return value


def _check_lengths(texts: Texts, long_text: str, info: ValidationInfo) -> None:
    settings = _settings(info)
    windows = long_text == "windows"
    limit = settings.max_windowed_text_chars if windows else settings.max_text_chars
    for i, item in enumerate(_inputs(texts)):
        for text in _texts_of(item):
            if len(text) > limit:
                hint = (
                    "" if windows else f'; long_text "windows" takes up to {settings.max_windowed_text_chars}'
                )
                raise ValueError(f"text {i} has {len(text)} characters; the limit is {limit}{hint}")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


ZERO_SHOT_OPTIONS = ("candidate_labels", "hypothesis_template", "multi_label")


class InvocationParameters(ExplainOptions):
    """Everything a request may say besides its texts."""

    explain: bool = False
    asynchronous: bool = Field(False, alias="async")
    candidate_labels: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200, pattern=NON_BLANK)]] | None,
        Field(
            min_length=1,
            max_length=64,
            description="Zero-shot (an NLI model): score each text against these labels, as transformers' "
            "zero-shot-classification pipeline does (each label's hypothesis entailed by the text); the "
            "answer's labels are these, and an explanation explains each of them.",
        ),
    ] = None
    hypothesis_template: Annotated[
        str,
        Field(
            min_length=1,
            max_length=500,
            pattern=r"\{\}",
            description="Zero-shot: the hypothesis, with {} where each label goes (the pipeline's default).",
        ),
    ] = DEFAULT_HYPOTHESIS
    multi_label: bool = Field(
        False, description="Zero-shot: score each label on its own (entailment against contradiction)"
    )
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("candidate_labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("candidate_labels: each label once")
        return value

    def explain_options(self) -> ExplainOptions:
        return ExplainOptions.model_construct(  # what the request set stays set (a model's defaults)
            self.model_fields_set & set(ExplainOptions.model_fields),
            **{name: getattr(self, name) for name in ExplainOptions.model_fields},
        )

    def inputs(self, texts: list[Input]) -> list[Input]:
        """The texts as this request classifies them: with candidate_labels, each a zero-shot text
        (text pairs take none)."""
        if self.candidate_labels is None:
            return texts
        if any(not isinstance(text, str) for text in texts):
            raise InvalidRequest("candidate_labels score single texts: a text pair takes none")
        labels = tuple(self.candidate_labels)
        return [ZeroShot(str(t), labels, self.hypothesis_template, self.multi_label) for t in texts]


class SeedBody(InvocationParameters):
    """The seed's body: `{"data": text | [texts], "explain": bool, ...options}`."""

    data: Texts

    _texts = field_validator("data")(_check_texts)

    @model_validator(mode="after")
    def _lengths(self, info: ValidationInfo) -> SeedBody:
        _check_lengths(self.data, self.long_text, info)
        return self


class HuggingFaceBody(_Strict):
    """The SageMaker Hugging Face toolkit body: `{"inputs": ..., "parameters": {...}}`."""

    inputs: Texts
    parameters: InvocationParameters = InvocationParameters()

    _texts = field_validator("inputs")(_check_texts)

    @model_validator(mode="after")
    def _lengths(self, info: ValidationInfo) -> HuggingFaceBody:
        _check_lengths(self.inputs, self.parameters.long_text, info)
        return self


def validation_message(error: ValidationError) -> str:
    """A one-line, client-facing summary of a pydantic error (no internals)."""
    parts = []
    for item in error.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_model(schema: type[BaseModel], data: Any, settings: Settings) -> Any:
    """Validate `data` against `schema` with the settings' limits; raise InvalidRequest on failure."""
    try:
        return schema.model_validate(data, context={"settings": settings})
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from None


def text_problem(text: Any, options: dict[str, Any], settings: Settings) -> str | None:
    """Why one text, sent with these options, would be refused (empty, too long, not valid Unicode),
    phrased for a single text; None when it would be accepted. Record bodies and `clarion explain`
    check each record's text with it, as a JSON body's text is checked."""
    try:
        parse_model(SeedBody, {**options, "data": text}, settings)
    except InvalidRequest as exc:
        return exc.message.removeprefix("data: ").removeprefix("body: ").replace("text 0 ", "the text ")
    return None
