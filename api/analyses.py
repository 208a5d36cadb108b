"""HTTP views of dataset analyses: POST /analyses (a JSON Lines or CSV body, or an S3 object), GET and
DELETE /analyses/<id>. The work itself is shared/jobs/analysis.py's, on the workers or inline."""

from __future__ import annotations

import io
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, url_for

from api import openapi as doc
from api.bodies import analysis_body
from api.context import data_plane
from api.invocations import html_response
from api.negotiation import HTML, JSON, REPLAYED, idempotency, response_type
from api.operations import documented
from api.records import JSON_LINES_TYPES
from shared.analysis.aggregate import AGG_METHODS
from shared.errors import InvalidRequest, UnsupportedMediaType
from shared.io.records import Record, csv_table, json_lines, json_pair_lines
from shared.io.results import body
from shared.render.report import analysis_report, analysis_status_document
from shared.settings import Settings

bp = Blueprint("analyses", __name__)


class Names(list):
    """A query parameter holding names, comma-separated, each trimmed (zero-shot's candidate labels)."""


# Query parameters: the options of `clarion analyze`, with the type each is read as.
_EXPLANATION_OPTIONS = {
    "granularity": str,
    "max_evals": int,
    "time_budget": float,
    "labels": list,
    "seed": int,
    "precision": str,
    "output": str,
    "masking": str,
    "long_text": str,
    "faithfulness": bool,
    # zero-shot (an NLI model): every text scored against these labels
    "candidate_labels": Names,
    "hypothesis_template": str,
    "multi_label": bool,
}
_ANALYSIS_OPTIONS = {
    "agg_method": str,
    "top_k": int,
    "normalize": str,
    "text_field": str,
    "label_field": str,
    "pair_field": str,
}
_INPUT_OPTIONS = {"delimiter": str}
_DEFAULTS = {"granularity": "word", "labels": "all", "faithfulness": True}
# Faithfulness is measured on single texts: text pairs and zero-shot texts default to without it
# (asking for it is their 400).
_TWO_TEXT_DEFAULTS = {**_DEFAULTS, "faithfulness": False}
_ANALYSIS_DEFAULTS = {
    "agg_method": "mean_abs",
    "top_k": 50,
    "normalize": "case,punctuation",
    "text_field": "text",
}


def _query() -> tuple[dict[str, Any], dict[str, Any], str]:
    """The explanation options, the analysis's spec (how it reads and folds its input) and the CSV
    delimiter, from the query string."""
    known = {**_EXPLANATION_OPTIONS, **_ANALYSIS_OPTIONS, **_INPUT_OPTIONS}
    unknown = sorted(set(request.args) - set(known))
    if unknown:
        raise InvalidRequest(f"unknown query parameter(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, raw in request.args.items():
        values[name] = _typed(name, raw, known[name])
    two_texts = "pair_field" in values or "candidate_labels" in values
    parameters = {"explain": True, **(_TWO_TEXT_DEFAULTS if two_texts else _DEFAULTS)}
    parameters.update({k: v for k, v in values.items() if k in _EXPLANATION_OPTIONS})
    spec = {**_ANALYSIS_DEFAULTS, "label_field": None, "pair_field": None}
    spec.update({k: v for k, v in values.items() if k in _ANALYSIS_OPTIONS})
    if spec["agg_method"] not in AGG_METHODS:
        raise InvalidRequest(f"agg_method: {spec['agg_method']!r}; use one of {list(AGG_METHODS)}")
    delimiter = values.get("delimiter", ",")
    if len(delimiter) != 1:
        raise InvalidRequest("delimiter: one character")
    return parameters, spec, delimiter


def _typed(name: str, raw: str, kind: type) -> Any:
    if kind is Names:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kind is int:
        if not raw.strip().lstrip("-").isdigit():
            raise InvalidRequest(f"{name}: a whole number, not {raw!r}")
        return int(raw)
    if kind is float:
        try:
            return float(raw)  # its range (and nan, inf) is the options' check
        except ValueError:
            raise InvalidRequest(f"{name}: a number of seconds, not {raw!r}") from None
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise InvalidRequest(f"{name}: true or false, not {raw!r}")
        return raw.lower() in ("true", "1")
    if kind is list:
        return raw if raw in ("all", "predicted") else [part for part in raw.split(",") if part]
    if not raw:
        raise InvalidRequest(f"{name}: empty")
    return raw


def _records(data: bytes, kind: str, spec: dict[str, Any], delimiter: str, source: str) -> list[Record]:
    """The input's lines as records: JSON Lines, CSV (or tab-separated) with a header, or text lines;
    with pair_field each record a text pair (a record without its second text is its own error)."""
    text = data.decode("utf-8", errors="replace")  # a bad byte becomes U+FFFD, as in `clarion analyze`
    field, label, pair = spec["text_field"], spec["label_field"], spec.get("pair_field")
    if kind == "jsonl":
        if pair is not None:
            return list(json_pair_lines(text.splitlines(), (field,), pair, label))
        return list(json_lines(text.splitlines(), (field,), label))
    if kind in ("csv", "tsv"):
        lines = io.StringIO(text, newline="")
        return list(csv_table(lines, field, label, "\t" if kind == "tsv" else delimiter, source, pair))
    if label:
        raise InvalidRequest(f"{source}: a text file has no labels (label_field)")
    if pair is not None:
        raise InvalidRequest(f"{source}: a text file holds one text per line; pairs need .jsonl or .csv")
    return [
        Record(n, line, None if line.strip() else "empty line") for n, line in enumerate(text.splitlines(), 1)
    ]


def _input(
    settings: Settings, spec: dict[str, Any], delimiter: str
) -> tuple[list[Record], str | None, str | None]:
    """The records to analyze, and the S3 input and output when the body names them."""
    mimetype = request.mimetype
    if mimetype == JSON:
        located = request.get_json(silent=True)
        if (
            not isinstance(located, dict)
            or not isinstance(located.get("input"), str)
            or set(located) - {"input", "output"}
        ):
            raise InvalidRequest(
                'a JSON body is {"input": "s3://bucket/key", "output": "s3://bucket/prefix/"}'
            )
        output = located.get("output")
        if output is not None and not isinstance(output, str):
            raise InvalidRequest("output: an s3:// location")
        from shared.storage.s3 import check_allowed, read_object, split_uri

        # A malformed location is a 400 first; then both are checked against the allowed prefixes,
        # before any S3 call: a forbidden output must not cost a read.
        uri = located["input"]
        _, key = split_uri(uri)
        kind = key.rsplit(".", 1)[-1].lower() if "." in key else ""
        if kind not in ("jsonl", "csv", "tsv", "txt"):
            raise InvalidRequest(f"{uri}: name the object .jsonl, .csv, .tsv or .txt")
        allowed = settings.s3_allowed_prefixes
        if output is not None:
            check_allowed(output, allowed, folder=True)
        check_allowed(uri, allowed)
        data = read_object(uri, settings.analysis_max_bytes, allowed)
        return _records(data, kind, spec, delimiter, uri), uri, output
    if mimetype in JSON_LINES_TYPES:
        return _records(request.get_data(), "jsonl", spec, delimiter, "body"), None, None
    if mimetype == "text/csv":
        return _records(request.get_data(), "csv", spec, delimiter, "body"), None, None
    raise UnsupportedMediaType(
        f"POST /analyses takes JSON Lines ({JSON_LINES_TYPES[0]}), CSV (text/csv) or "
        f'{{"input": "s3://..."}} ({JSON}), not {mimetype or "no Content-Type"!r}'
    )


@bp.post("/analyses")
@documented(post=doc.submit_analysis)
def create_analysis() -> Any:
    plane = data_plane()
    settings = plane.settings
    request.max_content_length = settings.analysis_max_bytes  # a larger body is a 413
    parameters, spec, delimiter = _query()
    made, replayed = plane.submit_analysis(
        parameters,
        spec,
        lambda: _input(settings, spec, delimiter),
        g.ticket,
        g.owner,
        idempotency(request, g.owner),
    )
    response = jsonify(body(analysis_body(made, plane.analyses.store)))
    response.headers["Location"] = url_for("analyses.get_analysis", analysis_id=made.id)
    if replayed:
        response.headers[REPLAYED] = "true"
    return response, 202 if plane.analyses.asynchronous else 200


@bp.get("/analyses/<analysis_id>")
@documented(get=doc.get_analysis, parameters={"analysis_id": doc.ANALYSIS_ID})
def get_analysis(analysis_id: str) -> Any:
    plane = data_plane()
    analysis = plane.analysis(analysis_id, g.owner)
    store = plane.analyses.store
    if response_type(request, (JSON, HTML)) == HTML:
        document = analysis_body(analysis, store).analysis
        if document is not None:
            title = f"Clarion analysis {analysis.id}"
            return html_response(lambda nonce: analysis_report(document, title=title, nonce=nonce))
        status = (analysis.id, analysis.status, analysis.error)
        return html_response(lambda nonce: analysis_status_document(*status))
    return jsonify(body(analysis_body(analysis, store)))


@bp.delete("/analyses/<analysis_id>")
@documented(delete=doc.delete_analysis, parameters={"analysis_id": doc.ANALYSIS_ID})
def delete_analysis(analysis_id: str) -> Any:
    """Like an explanation job's: a queued or running analysis is cancelled (200); a finished one is
    removed with everything it stored (204, then 404)."""
    plane = data_plane()
    analysis = plane.cancel_analysis(analysis_id, g.owner)
    if analysis is None:
        return Response(status=204)
    return jsonify(body(analysis_body(analysis, plane.analyses.store)))
