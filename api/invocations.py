"""POST /invocations beyond one JSON body: record bodies (JSON Lines, CSV) as Clarify clients and Batch
Transform send them, Clarify's response shape, and every response type a client may accept."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from flask import Request, Response, jsonify

from api.bodies import error_detail
from api.clarify import (
    ENABLE_HEADER,
    clarify_body,
    clarify_options,
    label_headers,
    records_to_explain,
    scores_by_label,
)
from api.codecs import body_text
from api.context import data_plane
from api.negotiation import CSV, HTML, JSON, JSON_LINES, response_type
from api.records import decode_records
from shared.errors import InvalidRequest
from shared.io.inputs import Input, TextPair
from shared.io.records import Record
from shared.io.results import Classification
from shared.io.schemas import InvocationParameters, parse_model, text_problem
from shared.render.html import content_security_policy, explanation_document, new_nonce
from shared.runtime.engine import Ticket
from shared.settings import Settings

RESULT_TYPES = (JSON, JSON_LINES, CSV, HTML)  # a JSON body: JSON unless asked otherwise
RECORD_RESULT_TYPES = (JSON_LINES, JSON, CSV, HTML)  # records: a line per record unless asked


def clarify(texts: Sequence[Input], request: Request, ticket: Ticket) -> dict[str, Any]:
    """Clarify's response: every record's scores, explanations where the header's expression says
    so, with the endpoint's Clarify settings. A text pair (Clarify's two feature columns) is
    explained as one game over both texts, reported as two text features."""
    plane = data_plane()
    settings, labels = plane.settings, plane.service.model.labels
    parameters = parse_model(InvocationParameters, clarify_options(settings), settings)
    expression = request.headers.get(ENABLE_HEADER, settings.clarify_enable_explanations)

    def scores(classified: list[Classification]) -> list[list[float]]:
        return [scores_by_label(classification, labels) for classification in classified]

    classified, explanations = plane.classify_then_explain(
        texts, parameters, lambda found: records_to_explain(expression, scores(found)), ticket
    )
    return clarify_body(label_headers(settings, labels), labels, scores(classified), explanations)


def invoke_records(
    request: Request, options: dict[str, Any], ticket: Ticket, pair_column: int | None = None
) -> Response:
    """A JSON Lines or CSV body: one text (or text pair) per record; `pair_column`: a CSV body's
    text_pair column."""
    records = decode_records(body_text(request), request.mimetype, pair_column)
    if not records:
        raise InvalidRequest(
            "the body holds no records: every line is blank (in CSV: only whitespace, commas and quotes)"
        )
    kind = response_type(request, RECORD_RESULT_TYPES)
    settings = data_plane().settings
    if kind == JSON:  # Clarify's exchange: every record must be readable
        texts = [_valid(record, {}, settings) for record in records]
        return jsonify(clarify(texts, request, ticket))
    parameters: InvocationParameters = parse_model(InvocationParameters, options, settings)
    if parameters.asynchronous:
        raise InvalidRequest("async: record bodies are answered in the request; submit jobs to /explanations")
    checked = [_checked(record, options, settings) for record in records]
    if kind in (CSV, HTML) and (bad := next((r for r in checked if r.problem), None)):
        raise InvalidRequest(bad.problem or "")  # neither a CSV of labels nor a view can hold an error
    texts = [r.text or "" for r in checked if r.problem is None]
    results = iter(data_plane().results(texts, parameters, ticket))
    if kind == JSON_LINES:
        # One output line per input record, in order (Batch Transform joins them line by line); a
        # record that cannot be read gets its error on its own line instead of failing the batch.
        lines = [error_detail("invalid_request", r.problem) if r.problem else next(results) for r in checked]
        return json_lines(lines)
    return shaped(kind, texts, list(results), single=False)


def _checked(record: Record, options: dict[str, Any], settings: Settings) -> Record:
    if record.problem:
        return record
    try:
        return Record(record.line, _valid(record, options, settings))
    except InvalidRequest as exc:
        return Record(record.line, None, exc.message)


def _valid(record: Record, options: dict[str, Any], settings: Settings) -> Input:
    """The record's text, checked as a text of a JSON body would be (empty, too long, not Unicode)."""
    if record.problem:
        raise InvalidRequest(record.problem)
    problem = text_problem(record.text, options, settings)
    if problem:
        raise InvalidRequest(f"line {record.line}: {problem}")
    return record.text or ""


def html_texts(texts: Sequence[Input]) -> list[str]:
    """The texts an HTML view highlights, one per result (a zero-shot text's own): a text pair's
    units index two texts, which the view does not show."""
    if any(isinstance(text, TextPair) for text in texts):
        raise InvalidRequest("the HTML view shows one text per result: ask for JSON for text pairs")
    return [text if isinstance(text, str) else text.text for text in texts]


def shaped(kind: str, texts: Sequence[Input], results: list[dict[str, Any]], single: bool) -> Response:
    """Results in the response type the client accepts."""
    if kind == HTML:
        shown = html_texts(texts)
        return html_response(lambda nonce: explanation_document(shown, results, nonce=nonce))
    if kind == JSON_LINES:
        return json_lines(results)
    if kind == CSV:  # one line per text: its top label and that label's score
        lines = "".join(
            f"{_csv_cell(r['prediction'][0]['label'])},{r['prediction'][0]['score']:.7g}\n" for r in results
        )
        return Response(lines, mimetype=CSV)
    return jsonify(results[0] if single else results)


def json_lines(items: list[dict[str, Any]]) -> Response:
    text = "".join(json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n" for item in items)
    return Response(text, mimetype=JSON_LINES)


def _csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n\r') else value


def html_response(render: Callable[[str], str]) -> Response:
    """An HTML response whose inline script and style run under a per-response CSP nonce."""
    nonce = new_nonce()
    response = Response(render(nonce), mimetype="text/html")
    response.headers["Content-Security-Policy"] = content_security_policy(nonce)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.vary.add("Accept")
    return response
