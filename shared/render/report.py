"""HTML: a dataset analysis (analysis.json) as one self-contained report, with its drift when compared.

The charts and tables are plain HTML built here (a bar is a <div> whose width is its share of the
largest value shown), so the only script is clarion.js, which draws the worst errors exactly as every
other Clarion view draws an explanation. Everything is inline and every user string (units, texts,
labels, the model's name) is escaped: a report opens from a file, offline, and a unit that looks like
markup must stay text.
"""

from __future__ import annotations

from html import escape
from typing import Any

from shared.analysis.aggregate import ALL, CORRECT, WRONG, predicted_cohort
from shared.analysis.drift import unit_name
from shared.render.html import _asset, _document, explanation_fragment

BARS = 15  # units per direction in a label's chart, and in its Clarify list
COHORT_ROWS = 10  # units per cohort in a label's cohort table
MEASURES = ("comprehensiveness", "sufficiency")  # faithfulness, as the analysis averages it per cohort
_NONE = '<p class="note">none</p>'
_MARK_LEGEND = (
    "<span class=\"only-wrong\">Marked</span>: in the wrong cohort's top units, not the correct one's."
)
SHAP_LEGEND = "red raises the label's score, blue lowers it (SHAP's colours); &times;n: occurrences"


def analysis_report(
    document: dict[str, Any],
    comparison: dict[str, Any] | None = None,
    title: str = "Clarion analysis",
    nonce: str = "",
) -> str:
    """The whole report: header, per-label charts, cohorts, faithfulness, worst errors, then drift.
    Bars are SVG shapes sized by attributes, not inline styles, so the API's Content-Security-
    Policy (styles by nonce only) still draws them; `nonce` marks the report's own style and script."""
    clarion = document["clarion"]
    sections = [
        _header(clarion, title),
        _label_charts(document, clarion),
        _cohort_tables(clarion),
        _faithfulness(clarion),
        _worst_errors(clarion, nonce),
    ]
    if comparison is not None:
        sections.append(_drift(comparison))
    body = '<div class="report">\n' + "\n".join(sections) + "\n</div>\n"
    attr = f' nonce="{escape(nonce)}"' if nonce else ""
    return _document(title, body, head=f"<style{attr}>\n{_asset('report.css')}</style>")


def _header(clarion: dict[str, Any], title: str) -> str:
    options = clarion.get("options") or {}
    parameters = clarion.get("explanation_parameters") or {}
    accuracy = clarion.get("accuracy")
    facts = {
        "model": clarion.get("model"),
        "texts analyzed": clarion.get("texts"),
        "skipped": clarion.get("skipped"),
        "accuracy": None
        if accuracy is None
        else f"{accuracy:.1%} of {clarion.get('texts_with_true_label')} texts with a true label",
        "labels": ", ".join(clarion.get("labels") or []),
        "aggregation": options.get("agg_method"),
        "top_k": options.get("top_k"),
        "granularity": parameters.get("granularity"),
        "normalize": options.get("normalize"),
        "max_evals": parameters.get("max_evals"),
    }
    rows = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in facts.items() if v is not None
    )
    return f'<header><h1>{escape(title)}</h1>\n<dl class="facts">{rows}</dl></header>'


def _label_charts(document: dict[str, Any], clarion: dict[str, Any]) -> str:
    """Per label: the units that raise and lower it most (signed mean over all texts), and Clarify's list."""
    everything = clarion["cohorts"].get(ALL, {}).get("labels", {})
    kernel_shap = document["explanations"]["kernel_shap"]
    parts = [f'<section id="labels"><h2>What drives each label</h2><p class="note">{SHAP_LEGEND}</p>']
    for label, stats in _in_order(clarion, everything):
        raising, lowering = stats["top_positive"][:BARS], stats["top_negative"][:BARS]
        scale = max((abs(e["mean"]) for e in raising + lowering), default=0.0) or 1.0  # one scale per label
        parts.append(
            f'<article class="label"><h3>{escape(label)}</h3><div class="charts">'
            f"{_chart('Raise the score most (mean attribution)', raising, scale, clarion)}"
            f"{_chart('Lower the score most (mean attribution)', lowering, scale, clarion)}"
            f"{_clarify_list(kernel_shap.get(label), clarion)}</div></article>"
        )
    return "\n".join(parts) + "</section>"


def _chart(heading: str, entries: list[dict[str, Any]], scale: float, clarion: dict[str, Any]) -> str:
    rows = "".join(
        f'<div class="bar-row"><span class="term" title="{escape(e["unit"])}">{_term(e, clarion)}</span>'
        f'<svg class="track" viewBox="0 0 100 10" preserveAspectRatio="none">'
        f'<rect class="hbar {_direction(e["mean"])}" height="10" rx="1.5" '
        f'width="{max(1.5, 100 * abs(e["mean"]) / scale):.2f}"></rect></svg>'
        f'<span class="num">{_signed(e["mean"])}</span><span class="count">&times;{e["count"]}</span></div>'
        for e in entries
    )
    return f'<div class="chart"><h4>{escape(heading)}</h4>{rows or _NONE}</div>'


def _clarify_list(entry: dict[str, Any] | None, clarion: dict[str, Any]) -> str:
    """Clarify's own view of the label: global_top_shap_text, ranked by the analysis' aggregation;
    a text pair's two texts as two text features, each with its own list."""
    if not entry:
        return ""
    method = (clarion.get("options") or {}).get("agg_method", "")
    parts = [
        f'<div class="clarify"><h4>Clarify global_top_shap_text ({escape(method)})</h4>'
        f'<p class="note">expected value {_number(entry["expected_value"])}</p>'
    ]
    for feature, units in entry["global_top_shap_text"].items():
        items = "".join(
            f'<li><span class="term">{escape(u)}</span> <span class="num">{_number(v)}</span></li>'
            for u, v in list(units.items())[:BARS]
        )
        parts.append(
            f'<p class="note">global SHAP value of {escape(feature)}: '
            f"{_number(entry['global_shap_values'].get(feature))}</p><ol>{items}</ol>"
        )
    return "".join(parts) + "</div>"


def _cohort_tables(clarion: dict[str, Any]) -> str:
    """Per label, its top units side by side in the cohorts; a wrong-cohort unit missing from the
    correct cohort's top list is marked, since that is what the errors lean on."""
    cohorts = clarion["cohorts"]
    parts = ['<section id="cohorts"><h2>Cohorts</h2>']
    for label in clarion["labels"]:
        names = [n for n in (predicted_cohort(label), CORRECT, WRONG) if label in _labels_of(cohorts, n)]
        if not names:
            continue
        tops = {n: _labels_of(cohorts, n)[label]["top"][:COHORT_ROWS] for n in names}
        correct = {_key(e) for e in tops[CORRECT]} if CORRECT in tops else None
        head = ["#", *(f"{n} ({_labels_of(cohorts, n)[label]['texts']} texts)" for n in names)]
        rows = [
            [
                str(rank + 1),
                *(_cohort_cell(tops[n], rank, correct if n == WRONG else None, clarion) for n in names),
            ]
            for rank in range(max(len(t) for t in tops.values()))
        ]
        parts.append(f"<h3>{escape(label)}</h3>{_table(head, rows)}")
    parts.append(f'<p class="note">ranked by the aggregate; the signed mean beside. {_MARK_LEGEND}</p>')
    return "\n".join(parts) + "</section>"


def _cohort_cell(
    top: list[dict[str, Any]], rank: int, correct: set[tuple[int, str]] | None, clarion: dict[str, Any]
) -> str:
    """A unit and its signed mean, marked when the correct cohort's top units (`correct`) lack it."""
    if rank >= len(top):
        return ""
    entry = top[rank]
    cell = (
        f'<span class="term">{_term(entry, clarion)}</span> '
        f'<span class="{_direction(entry["mean"])}-text">{_signed(entry["mean"])}</span>'
    )
    marked = correct is not None and _key(entry) not in correct
    return f'<span class="only-wrong">{cell}</span>' if marked else cell


def _faithfulness(clarion: dict[str, Any]) -> str:
    rows = [
        [escape(name), escape(label), *(_number(f.get(m)) for m in MEASURES), str(f.get("texts", ""))]
        for name, cohort in clarion["cohorts"].items()
        for label, stats in _in_order(clarion, cohort["labels"])
        if (f := stats.get("faithfulness"))
    ]
    head = ["cohort", "label", *MEASURES, "texts"]
    table = _table(head, rows) if rows else '<p class="note">not measured (explain with faithfulness)</p>'
    legend = "ERASER, AOPC over the top units: higher comprehensiveness and lower sufficiency are better."
    return f'<section id="faithfulness"><h2>Faithfulness</h2><p class="note">{legend}</p>{table}</section>'


def _worst_errors(clarion: dict[str, Any], nonce: str) -> str:
    errors = clarion.get("worst_errors") or []
    if not errors:
        return f'<section id="errors"><h2>Worst errors</h2>{_NONE}</section>'
    predicted = [e["result"]["prediction"][0] for e in errors]
    rows = [
        [f"#{i + 1}", str(e["line"]), escape(str(e["true_label"])), escape(p["label"]), _number(p["score"])]
        for i, (e, p) in enumerate(zip(errors, predicted, strict=True))
    ]
    head = ["", "line", "true label", "predicted", "score"]
    if any("text_pair" in e for e in errors):  # the renderer draws one text: a pair's two are listed
        fields = _fields(clarion)
        head += [fields[0], fields[1]]
        for row, e in zip(rows, errors, strict=True):
            row += [escape(e["text"]), escape(e.get("text_pair", ""))]
        return f'<section id="errors"><h2>Worst errors</h2>{_table(head, rows)}</section>'
    drawn = explanation_fragment(
        [e["text"] for e in errors],
        [e["result"] for e in errors],
        title="The surest wrong predictions",
        nonce=nonce,
    )
    return f'<section id="errors"><h2>Worst errors</h2>{_table(head, rows)}\n{drawn}</section>'


def _drift(comparison: dict[str, Any]) -> str:
    parts = [
        '<section id="drift"><h2>Drift against the baseline</h2><p class="note">'
        f"nDCG of the current top {comparison['top_k']} units against the baseline's; below "
        f"{comparison['threshold']} is drift (SageMaker Clarify's model monitor). A positive rank "
        "change fell down the ranking; &mdash;: outside the top units.</p>"
    ]
    head = ["unit", "baseline rank", "current rank", "rank change", "baseline value", "current value"]
    for label, entry in comparison["labels"].items():
        badge = "drifted" if entry["drifted"] else "ok"
        rows = [_moved_row(comparison, m) for m in entry["moved"]]
        parts.append(
            f'<h3>{escape(label)} <span class="badge {badge}">{badge}</span> '
            f'<span class="ndcg">nDCG {entry["ndcg"]:.4f}</span></h3>{_table(head, rows) if rows else _NONE}'
        )
    for key, words in (("only_in_baseline", "only in the baseline"), ("only_in_current", "only in this run")):
        if comparison.get(key):
            parts.append(f'<p class="note">labels {words}: {escape(", ".join(comparison[key]))}</p>')
    return "\n".join(parts) + "</section>"


def _moved_row(comparison: dict[str, Any], m: dict[str, Any]) -> list[str]:
    ranks = [_rank(m["baseline_rank"]), _rank(m["current_rank"]), f"{m['rank_change']:+d}"]
    return [
        escape(unit_name(comparison, m)),
        *ranks,
        _number(m["baseline_value"]),
        _number(m["current_value"]),
    ]


def _table(head: list[str], rows: list[list[str]]) -> str:
    """A table of cells that are already HTML (escaped by the caller); the header is plain text."""
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def _fields(clarion: dict[str, Any]) -> dict[int, str]:
    """Each segment's field: 0 the text's, 1 a pair's second text's."""
    options = clarion.get("options") or {}
    return {0: options.get("text_field", "text"), 1: options.get("pair_field", "text_pair")}


def _key(entry: dict[str, Any]) -> tuple[int, str]:
    return entry.get("segment", 0), entry["unit"]


def _term(entry: dict[str, Any], clarion: dict[str, Any]) -> str:
    """A unit as shown; a text pair's unit tagged with the field of the text it comes from."""
    unit = escape(entry["unit"])
    if "segment" not in entry:
        return unit
    return f'{unit} <small class="feature">{escape(_fields(clarion)[entry["segment"]])}</small>'


def _labels_of(cohorts: dict[str, Any], name: str) -> dict[str, Any]:
    return cohorts.get(name, {}).get("labels", {})


def _in_order(clarion: dict[str, Any], per_label: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(label, per_label[label]) for label in clarion["labels"] if label in per_label]


def _direction(value: float) -> str:
    return "pos" if value > 0 else "neg" if value < 0 else "zero"


def _signed(value: float) -> str:
    return f"{value:+.4g}"


def _rank(rank: int | None) -> str:
    return "—" if rank is None else str(rank)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def analysis_status_document(analysis_id: str, status: str, error: dict[str, str] | None) -> str:
    """An analysis not finished (refreshing every 2 s), or one that ended without a report."""
    title = f"Clarion analysis {analysis_id}"
    refresh = '<meta http-equiv="refresh" content="2">' if status in ("queued", "running") else ""
    detail = f"<p>{escape(error.get('message', ''))}</p>" if error else ""
    body = (
        f'<div class="report"><h1>{escape(title)}</h1><p>Status: <strong class="status">'
        f"{escape(status)}</strong></p>{detail}</div>"
    )
    return _document(title, body, head=refresh)
