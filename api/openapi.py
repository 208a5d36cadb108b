"""The OpenAPI 3.1 document, generated from the same pydantic models that validate requests and
shape responses (shared/io/schemas.py, shared/io/results.py, api/bodies.py).

It describes the deployment that serves it: the limits are those of its settings (MAX_TEXTS_PER_REQUEST,
MAX_TEXT_CHARS, MAX_WINDOWED_TEXT_CHARS, MAX_EVALS_LIMIT, EXPLAIN_BATCH_SIZE_LIMIT) and the label
names those of its model once loaded, so a request the document calls valid is accepted and one it
calls invalid is refused (tests/test_fuzzing.py checks both ways).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from flask import Flask
from pydantic.json_schema import models_json_schema

from api.bodies import AnalysisBody, ErrorBody, JobBody, ProtocolErrorBody
from api.clarify import ClarifyResponse
from api.context import data_plane
from api.kserve.document import kserve_schemas
from api.operations import Deployment, PathParameter, paths
from api.records import CSV_RECORD, JSON_LINES_RECORD
from shared.analysis.aggregate import AGG_METHODS
from shared.analysis.units import NORMALIZE_PATTERN
from shared.io.results import API_VERSION, Health, TextResult
from shared.io.schemas import NON_BLANK, TEXT_JSON_SCHEMA, ZERO_SHOT_OPTIONS, HuggingFaceBody, SeedBody
from shared.kinds import GRANULARITIES, LONG_TEXTS, MASKINGS, OUTPUTS
from shared.settings import Settings

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _text(description: str, mimetype: str) -> dict[str, Any]:
    """A response that is a document of its own type (a page, Prometheus text), not JSON."""
    return {"description": description, "content": {mimetype: {"schema": {"type": "string"}}}}


def _with_html(response: dict[str, Any], what: str) -> dict[str, Any]:
    """The same response as a self-contained HTML view, for `Accept: text/html`."""
    html = {"schema": {"type": "string", "description": f"{what} (with Accept: text/html)"}}
    return {**response, "content": {**response["content"], "text/html": html}}


def _as_records(response: dict[str, Any]) -> dict[str, Any]:
    """/invocations' other response types: a line per text (JSON Lines, CSV), and Clarify's JSON."""
    lines = "one JSON object per text or record, in order (a record that cannot be read: its error)"
    content = {
        _JSON: {"schema": {"oneOf": [response["content"][_JSON]["schema"], _ref("ClarifyResponse")]}},
        "application/jsonlines": {"schema": {"type": "string", "description": lines}},
        "text/csv": {"schema": {"type": "string", "description": "one line per text: label,score"}},
    }
    return {**response, "content": {**response["content"], **content}}


def _error(description: str) -> dict[str, Any]:
    return _json(description, _ref("ErrorBody"))


_RECORDS = (
    "; a record whose text cannot be read or is refused (empty, too long) is answered by its error on "
    "its own line of a JSON Lines response (a 400 for a CSV, HTML or Clarify response)"
)


def _body(settings: Settings, records: bool = False) -> dict[str, Any]:
    """A request body: JSON or text; with `records`, also JSON Lines and CSV (/invocations only)."""
    shapes = ("SeedBody", "HuggingFaceBody")
    plain = {
        **TEXT_JSON_SCHEMA,
        "maxLength": settings.max_text_chars,
        "description": "one text (UTF-8 unless the Content-Type names a charset): at least one character "
        "that is not whitespace, at most MAX_TEXT_CHARS characters",
    }
    content = {
        _JSON: {"schema": {"oneOf": [_ref(name) for name in shapes]}},
        "text/plain": {"schema": plain},
    }
    if records:
        content |= {
            "application/jsonlines": {
                "schema": {
                    "type": "string",
                    "pattern": JSON_LINES_RECORD,
                    "description": 'one record per line: {"features": ["text"]} (Clarify), {"text": ...}, '
                    '{"data": ...}, {"inputs": ...} or a JSON string; a text pair as {"text": ..., '
                    '"text_pair": ...} or {"features": [<text>, <text>]}; blank lines are skipped, and a '
                    "body of blank lines only is a 400" + _RECORDS,
                }
            },
            "text/csv": {
                "schema": {
                    "type": "string",
                    "pattern": CSV_RECORD,
                    "description": "one text per record, in the first column (with the custom attribute "
                    "pair_column=<n>, a text pair: its second text in column n, a row without one that "
                    "record's error); blank rows are skipped, and "
                    "a body with no character besides whitespace, commas and double quotes holds no "
                    "record: a 400" + _RECORDS,
                }
            },
        }
    return {"required": True, "content": content}


_UNAUTHORIZED = {"401": _error("API_KEYS are set and the request has no valid Authorization: Bearer key")}
_REQUEST_ERRORS = {
    "400": _error(
        "a body this document calls invalid: malformed JSON, wrong types, unknown fields, empty texts or "
        "lists, texts or lists over this deployment's limits, out-of-range options, label names the "
        "model does not have, texts that are not valid Unicode"
    ),
    **_UNAUTHORIZED,
    "413": _error("body larger than MAX_REQUEST_BYTES"),
    "415": _error("content type other than JSON, text, JSON Lines or CSV"),
    "503": _error("model loading, job backend unavailable, or past the request timeout"),
}
_JOB = _json("the job", _ref("JobBody"))
# The job a POST answers with leads to its GET and DELETE (schemathesis follows these links).
_JOB_LINKS = {
    "links": {
        "GetExplanation": {
            "operationId": "getExplanation",
            "parameters": {"job_id": "$response.body#/id"},
            "description": "the job: 200 while it exists, 404 once a DELETE removed it",
        },
        "DeleteExplanation": {
            "operationId": "deleteExplanation",
            "parameters": {"job_id": "$response.body#/id"},
            "description": "200 and the job, now cancelled, while queued or running; 204 once finished "
            "(record and result removed); 404 once removed",
        },
    }
}
_SUBMITTED = {**_JOB, **_JOB_LINKS}
_ID = {"in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
# A submit's Idempotency-Key (docs/api.md#explanation-jobs): a repeat answers with the first job.
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a repeat with the same key and request answers with the job the first one made "
    "(Idempotent-Replayed: true); with another request, a 422",
    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
}
_REUSED_KEY = {"422": _error("the Idempotency-Key was used with another request")}
_JOB_ERRORS = {
    **_UNAUTHORIZED,
    "406": _error("the Accept header allows neither JSON nor HTML"),
    "404": _error("no such job (or not the caller's)"),
    "503": _error("job backend unavailable"),
}


def openapi_document(app: Flask) -> dict[str, Any]:
    """The document for the deployment `app` serves: its settings, and its model's labels, name and
    version once loaded (until then, any label name or model name is documented, and requests answer
    503); its paths are its routes (api/operations.py)."""
    plane = data_plane()
    service = plane.service
    ready = service.ready
    deployment = Deployment(
        settings=plane.settings,
        labels=tuple(service.model.labels) if ready else None,
        precisions=tuple(service.precisions),
        model_name=service.model.model_id if ready else None,
        model_version=plane.versions()[0] if ready else None,
    )
    return copy.deepcopy(_document(app, deployment))  # the cached one stays as built


@lru_cache(maxsize=8)
def _document(app: Flask, deployment: Deployment) -> dict[str, Any]:
    _, schemas = models_json_schema(
        [
            (SeedBody, "validation"),
            (HuggingFaceBody, "validation"),
            (TextResult, "serialization"),
            (JobBody, "serialization"),
            (AnalysisBody, "serialization"),
            (ErrorBody, "serialization"),
            (ProtocolErrorBody, "serialization"),
            (Health, "serialization"),
            (ClarifyResponse, "serialization"),
        ],
        ref_template="#/components/schemas/{model}",
    )
    settings = deployment.settings
    schemas = _limited(copy.deepcopy(schemas["$defs"]), settings, deployment)
    schemas |= kserve_schemas(schemas, settings)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Clarion",
            "version": API_VERSION,
            "description": "Text classification that says why.",
        },
        "paths": paths(app, deployment),
        "components": {"schemas": schemas},
    }


# ---- the operations the views declare (api/routes.py, api/analyses.py) ---------------------------


def page(_: Deployment) -> dict[str, Any]:
    return {
        "summary": "the web page: type a text, see it classified and explained",
        "responses": {"200": _text("a static HTML page", "text/html")},
    }


def ping(_: Deployment) -> dict[str, Any]:
    return {
        "summary": "health of this worker",
        "responses": {
            "200": _json("model loaded and warm", _ref("Health")),
            "503": _json("model loading or failed to load", _ref("Health")),
        },
    }


def document(_: Deployment) -> dict[str, Any]:
    return {
        "summary": "this document",
        "responses": {"200": _json("OpenAPI 3.1", {"type": "object"}), **_UNAUTHORIZED},
    }


def invoke(deployment: Deployment) -> dict[str, Any]:
    results = [_ref("TextResult"), {"type": "array", "items": _ref("TextResult")}]
    return {
        "operationId": "invoke",
        "summary": "classify, and explain when asked",
        "requestBody": _body(deployment.settings, records=True),
        "responses": {
            "200": _with_html(
                _as_records(
                    _json(
                        "one result for one text, a list for a list; with explain + async and no broker, "
                        "the finished job; Clarify's shape for a JSON Lines or CSV body with Accept: "
                        "application/json (or CLARIFY_MODE)",
                        {"oneOf": [*results, _ref("JobBody")]},
                    )
                ),
                "the results drawn: scores, shaded units, label selector",
            ),
            "406": _error("the Accept header allows none of the response types"),
            "202": {**_json("explain + async: a queued job", _ref("JobBody")), **_JOB_LINKS},
            **_REQUEST_ERRORS,
        },
    }


def metrics(_: Deployment) -> dict[str, Any]:
    return {
        "summary": "Prometheus metrics of every process of this server",
        "responses": {
            "200": _text("Prometheus text format 0.0.4", "text/plain"),
            **_UNAUTHORIZED,
        },
    }


def execution_parameters(_: Deployment) -> dict[str, Any]:
    return {
        "summary": "what SageMaker Batch Transform asks before it sends work",
        "responses": {
            "200": _json(
                "from SAGEMAKER_MAX_CONCURRENT_TRANSFORMS, SAGEMAKER_BATCH_STRATEGY, "
                "SAGEMAKER_MAX_PAYLOAD_IN_MB",
                {
                    "type": "object",
                    "properties": {
                        "MaxConcurrentTransforms": {"type": "integer"},
                        "BatchStrategy": {"enum": ["MULTI_RECORD", "SINGLE_RECORD"]},
                        "MaxPayloadInMB": {"type": "integer"},
                    },
                    "required": ["MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB"],
                },
            )
        },
    }


def submit_job(deployment: Deployment) -> dict[str, Any]:
    return {
        "operationId": "submitExplanation",
        "summary": "submit an explanation job: 200 and the finished job without a broker, 202 and the "
        "queued job with one",
        "parameters": [_IDEMPOTENCY_KEY],
        "requestBody": _body(deployment.settings),
        "responses": {"200": _SUBMITTED, "202": _SUBMITTED, **_REQUEST_ERRORS, **_REUSED_KEY},
    }


def get_job(_: Deployment) -> dict[str, Any]:
    return {
        "operationId": "getExplanation",
        "summary": "a job",
        "responses": {"200": _with_html(_JOB, "the job's explanation, or its status"), **_JOB_ERRORS},
    }


def delete_job(_: Deployment) -> dict[str, Any]:
    return {
        "operationId": "deleteExplanation",
        "summary": "cancel a queued or running job (200: now cancelled); remove a finished one, record "
        "and result (204: a GET is then a 404)",
        "responses": {"200": _JOB, "204": {"description": "the finished job was removed"}, **_JOB_ERRORS},
    }


JOB_ID = PathParameter(lambda _: _ID | {"name": "job_id"})
ANALYSIS_ID = PathParameter(lambda _: _ID | {"name": "analysis_id"})


def submit_analysis(deployment: Deployment) -> dict[str, Any]:
    """POST /analyses (docs/analysis.md); the zero-shot options where the model is an NLI model."""
    analysis = _json("the analysis", _ref("AnalysisBody"))
    links = {
        "links": {
            "GetAnalysis": {
                "operationId": "getAnalysis",
                "parameters": {"analysis_id": "$response.body#/id"},
            },
            "DeleteAnalysis": {
                "operationId": "deleteAnalysis",
                "parameters": {"analysis_id": "$response.body#/id"},
            },
        }
    }
    return {
        "operationId": "submitAnalysis",
        "summary": "a dataset's explanation: 200 and the finished analysis without a broker, 202 and "
        "the queued analysis (its chunks on every worker) with one",
        "parameters": [*_analysis_query(deployment), _IDEMPOTENCY_KEY],
        "requestBody": _analysis_body(),
        "responses": {
            "200": {**analysis, **links},
            "202": {**analysis, **links},
            **_REQUEST_ERRORS,
            "403": _error(
                "an S3 location outside S3_ALLOWED_PREFIXES, or any S3 location where the deployment "
                "has no S3 credentials (no_s3_access)"
            ),
            "404": _error("no such S3 object, or the service may not read it"),
            "413": _error("over ANALYSIS_MAX_TEXTS lines or ANALYSIS_MAX_BYTES bytes"),
            "415": _error("content type other than JSON Lines, CSV or JSON"),
            **_REUSED_KEY,
            "429": _error("ANALYSIS_MAX_RUNNING analyses are queued or running already"),
            "503": _error("model loading, job backend or S3 unavailable, or past the request timeout"),
        },
    }


_ANALYSIS_ERRORS = {**_JOB_ERRORS, "404": _error("no such analysis (or not the caller's)")}


def get_analysis(_: Deployment) -> dict[str, Any]:
    return {
        "operationId": "getAnalysis",
        "summary": "an analysis: analysis.json once it succeeded (the report with Accept: text/html)",
        "responses": {
            "200": _with_html(_json("the analysis", _ref("AnalysisBody")), "the report, or the status"),
            **_ANALYSIS_ERRORS,
        },
    }


def delete_analysis(_: Deployment) -> dict[str, Any]:
    return {
        "operationId": "deleteAnalysis",
        "summary": "cancel a queued or running analysis (200); remove a finished one (204)",
        "responses": {
            "200": _json("the analysis", _ref("AnalysisBody")),
            "204": {"description": "removed"},
            **_ANALYSIS_ERRORS,
        },
    }


def _analysis_query(deployment: Deployment) -> list[dict[str, Any]]:
    settings, precisions = deployment.settings, deployment.precisions
    query = [
        _query(
            "text_field", {"type": "string", "minLength": 1}, "the text's field (JSON Lines) or column (CSV)"
        ),
        _query(
            "pair_field",
            {"type": "string", "minLength": 1},
            "text pairs (NLI, cross-encoders): each record's second text, its field (JSON Lines) or column "
            "(CSV), not text_field's; a record without it is that record's error (skipped, counted). A "
            "pair's units are aggregated apart from the text's: a second text feature in "
            'global_top_shap_text, and "segment": 1 on each unit of the cohorts\' lists. Takes neither '
            'precision "amortized", faithfulness (default false here) nor long_text "windows", nor '
            "candidate_labels",
        ),
        _query("label_field", {"type": "string", "minLength": 1}, "the true label's field or column"),
        _query("delimiter", {"type": "string", "minLength": 1, "maxLength": 1}, "a CSV body's delimiter"),
        _query("granularity", {"enum": list(GRANULARITIES)}, 'the units (default "word")'),
        _query(
            "max_evals", {"type": "integer", "minimum": 4, "maximum": settings.max_evals_limit}, "per text"
        ),
        _query(
            "time_budget",
            {"type": "number", "exclusiveMinimum": 0, "maximum": settings.time_budget_limit_s},
            "seconds of exact refinement per chunk of texts (anytime values)",
        ),
        _query(
            "labels",
            {"type": "string", "minLength": 1},
            '"all" (default), "predicted" or names, comma-separated',
        ),
        _query("seed", {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}, "SHAP's seed"),
        _query("precision", {"enum": list(precisions)}, "exact, fast (or amortized, with an artifact)"),
        _query("output", {"enum": list(OUTPUTS)}, "probability or logit"),
        _query("masking", {"enum": list(MASKINGS)}, "tokens or text"),
        _query("long_text", {"enum": list(LONG_TEXTS)}, "truncate or windows"),
        _query(
            "faithfulness",
            {"type": "boolean"},
            "measure faithfulness (default true; false, and refused, with pair_field or candidate_labels)",
        ),
        _query("agg_method", {"enum": list(AGG_METHODS)}, "how units aggregate (default mean_abs)"),
        _query("top_k", {"type": "integer", "minimum": 1}, "top units per label (default 50)"),
        _query(
            "normalize",
            {"type": "string", "pattern": NORMALIZE_PATTERN},
            '"case,punctuation" (default), "case", "punctuation", "none"',
        ),
    ]
    if deployment.nli:  # zero-shot labels need an NLI model (an entailment label): elsewhere a 400
        query += [
            _query(
                "candidate_labels",
                {"type": "string", "minLength": 1, "pattern": NON_BLANK},
                "zero-shot: every text scored against these labels, comma-separated (each once, at most "
                "64), as transformers' zero-shot-classification pipeline scores them; the global words "
                "come per candidate label, and `labels` names candidates",
            ),
            _query(
                "hypothesis_template",
                {"type": "string", "minLength": 1, "maxLength": 500, "pattern": r"\{\}"},
                'zero-shot: the hypothesis, with {} where each label goes (default "This example is {}.")',
            ),
            _query(
                "multi_label",
                {"type": "boolean"},
                "zero-shot: score each label on its own (entailment against contradiction)",
            ),
        ]
    return query


def _analysis_body() -> dict[str, Any]:
    file = (
        "the dataset: one record per line, at most ANALYSIS_MAX_TEXTS lines and ANALYSIS_MAX_BYTES bytes; "
        "a line whose text cannot be read or is refused is skipped (counted), and an input with no "
        "text to explain is a 400"
    )
    body = {
        "required": True,
        "content": {
            "application/jsonlines": {"schema": {"type": "string", "description": file + " (JSON objects)"}},
            "text/csv": {"schema": {"type": "string", "description": file + " (a header row first)"}},
            _JSON: {
                "schema": {
                    "type": "object",
                    "properties": {
                        "input": {
                            "type": "string",
                            "pattern": "^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+\\.(jsonl|csv|tsv|txt)$",
                        },
                        "output": {
                            "type": "string",
                            "pattern": "^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
                        },
                    },
                    "required": ["input"],
                    "additionalProperties": False,
                    "description": "an S3 object to analyze, and where to write the files",
                }
            },
        },
    }
    return body


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _limited(schemas: dict[str, Any], settings: Settings, deployment: Deployment) -> dict[str, Any]:
    """The request schemas with this deployment's limits, label names and precisions (the validators
    and the service check the same: shared/io/schemas.py), each text's length by its long_text mode
    ("amortized" reads no windows)."""
    labels, precisions = deployment.labels, deployment.precisions
    windowed_precisions = [p for p in precisions if p != "amortized"]
    # Zero-shot labels need an NLI model (an entailment label): elsewhere they are unknown options.
    nli = deployment.nli
    for name in ("SeedBody", "InvocationParameters"):
        options = schemas[name]["properties"]
        options["precision"] = {**options["precision"], "enum": list(precisions)}
        _branch(options["max_evals"], "integer")["maximum"] = settings.max_evals_limit
        _branch(options["time_budget"], "number")["maximum"] = settings.time_budget_limit_s
        _branch(options["batch_size"], "integer")["maximum"] = settings.explain_batch_size_limit
        if labels is not None and not nli:  # with zero-shot, `labels` may name the candidates
            _branch(options["labels"], "array")["items"] = {"type": "string", "enum": list(labels)}
        if not nli:
            for option in ZERO_SHOT_OPTIONS:
                options.pop(option, None)
    truncate, windows = settings.max_text_chars, settings.max_windowed_text_chars
    seed = schemas["SeedBody"]
    _limit_count(seed["properties"]["data"], settings.max_texts)
    # SeedBody's shapes (ExplainOptions' json_schema_extra): "truncate" (the default) and "windows";
    # text pairs only truncated, explained exact or fast, without faithfulness.
    pair_precisions = [p for p in precisions if p != "amortized"]
    pairs = {
        "precision": {"enum": pair_precisions},
        "faithfulness": {"const": False},
    }
    # Zero-shot texts take what pairs take; the other shapes take no candidate labels, and their
    # `labels` name the model's.
    model_labels: dict[str, Any] = {}
    if nli:
        assert labels is not None
        named = {"type": "array", "items": {"type": "string", "enum": list(labels)}}
        model_labels = {
            "labels": {"anyOf": [{"enum": ["all", "predicted"]}, named]},
            "candidate_labels": {"type": "null"},
        }
    truncated, windowed = seed["anyOf"]
    seed["anyOf"] = [
        _shape(truncated, {"data": _lengths(truncate, pairs=False), **model_labels}),
        _shape(truncated, {"data": _lengths(truncate, pairs=True), **pairs, **model_labels}),
        _shape(
            windowed,
            {
                "data": _lengths(windows, pairs=False),
                "precision": {"enum": windowed_precisions},
                **model_labels,
            },
        ),
    ]
    if nli:
        seed["anyOf"].append(_shape(truncated, {"data": _lengths(truncate, pairs=False), **pairs}))
    hf = schemas["HuggingFaceBody"]
    _limit_count(hf["properties"]["inputs"], settings.max_texts)
    hf["properties"]["parameters"]["default"] = {}  # no parameters: every option's default
    hf["anyOf"] = [
        {
            "properties": {
                "inputs": _lengths(truncate, pairs=False),
                "parameters": {"properties": {"long_text": {"const": "truncate"}, **model_labels}},
            }
        },
        {
            "properties": {
                "inputs": _lengths(truncate, pairs=True),
                "parameters": {"properties": {"long_text": {"const": "truncate"}, **pairs, **model_labels}},
            }
        },
        {
            "properties": {
                "inputs": _lengths(windows, pairs=False),
                "parameters": {
                    "properties": {
                        "long_text": {"const": "windows"},
                        "precision": {"enum": windowed_precisions},
                        **model_labels,
                    },
                    "required": ["long_text"],
                },
            },
            "required": ["parameters"],
        },
    ]
    if nli:  # zero-shot texts
        hf["anyOf"].append(
            {
                "properties": {
                    "inputs": _lengths(truncate, pairs=False),
                    "parameters": {"properties": {"long_text": {"const": "truncate"}, **pairs}},
                }
            }
        )
    return schemas


def _shape(shape: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """One of a body's shapes, with more of its properties constrained."""
    return {**shape, "properties": {**shape["properties"], **properties}}


def _branch(schema: dict[str, Any], kind: str) -> dict[str, Any]:
    """The branch of an `anyOf` of this JSON type."""
    return next(branch for branch in schema["anyOf"] if branch.get("type") == kind)


def _limit_count(texts: dict[str, Any], max_texts: int) -> None:
    _branch(texts, "array")["maxItems"] = max_texts


def _lengths(max_chars: int, pairs: bool) -> dict[str, Any]:
    """At most `max_chars` characters per text, whether one text, a pair, or a list of them
    (maxLength constrains only strings, properties only objects and items only arrays); `pairs`
    False: no pair at all."""
    text = {"maxLength": max_chars}
    if not pairs:
        return {**text, "not": {"type": "object"}, "items": {**text, "not": {"type": ["object", "array"]}}}
    pair = {**text, "properties": {"text": text, "text_pair": text}}
    return {**pair, "items": {**pair, "items": text}}
