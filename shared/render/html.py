"""HTML: the self-contained explanation view (POST /invocations and GET /explanations/<id> with
`Accept: text/html`, and the CLI's report) and the web page of GET /.

One renderer: shared/render/static/clarion.js draws an explanation from the same JSON the API returns, in the
responses, the report and the page alike. Everything is inline (CSS, JS, data): deployments are often
offline, and a report must open from a file. User text travels only as JSON inside a script element,
escaped so that it cannot close that element, and the script puts it on the page as text, never as
markup. HTTP responses also carry a Content-Security-Policy whose script nonce leaves an injected
handler or script nothing to run with. Plain Python: the CLI imports it without Flask.
"""

from __future__ import annotations

import html
import json
import secrets
from functools import cache
from pathlib import Path
from typing import Any

_STATIC = Path(__file__).parent / "static"


@cache
def _asset(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def content_security_policy(nonce: str) -> str:
    """Only Clarion's own inline script and style run; the page may call this API and nothing else."""
    return (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def script_json(data: Any) -> str:
    """JSON that is safe inside <script>: no "</script>", "<!--" or line separators can form."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e")):
        text = text.replace(raw, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def explanation_fragment(
    texts: list[str], results: list[dict[str, Any]], title: str = "", summary: bool = False, nonce: str = ""
) -> str:
    """A <div> that draws itself: `results` are the API's per-text bodies, in the order of `texts`."""
    data = {
        "title": title,
        "summary": summary,
        "results": [{"text": text, "result": result} for text, result in zip(texts, results, strict=True)],
    }
    attr = f' nonce="{html.escape(nonce)}"' if nonce else ""
    return (
        f'<div class="clarion"></div>\n'
        f"<style{attr}>\n{_asset('clarion.css')}</style>\n"
        f'<script type="application/json" class="clarion-data">{script_json(data)}</script>\n'
        f"<script{attr}>\n{_asset('clarion.js')}\n"
        "(function (me) {\n"
        "  var data = me.previousElementSibling, root = data.previousElementSibling.previousElementSibling;\n"
        "  window.Clarion.render(root, JSON.parse(data.textContent));\n"
        "})(document.currentScript);\n</script>\n"
    )


def explanation_document(
    texts: list[str], results: list[dict[str, Any]], title: str = "Clarion explanation", **options: Any
) -> str:
    """A whole HTML document around `explanation_fragment`."""
    body = explanation_fragment(texts, results, title=title, **options)
    return _document(title, body)


def job_document(job: dict[str, Any], texts: list[str], nonce: str = "") -> str:
    """A job as HTML: its explanation once it succeeded, its status (refreshing) before."""
    title = f"Clarion explanation job {job['id']}"
    result = job.get("result")
    if job["status"] == "succeeded" and result is not None:
        results = result if isinstance(result, list) else [result]
        return _document(title, explanation_fragment(texts, results, title=title, nonce=nonce))
    refresh = '<meta http-equiv="refresh" content="2">' if job["status"] in ("queued", "running") else ""
    error = job.get("error") or {}
    detail = f"<p>{html.escape(error.get('message', ''))}</p>" if error else ""
    body = (
        f'<div class="clarion"><h1>{html.escape(title)}</h1><p>Status: <strong class="status">'
        f"{html.escape(job['status'])}</strong></p>{detail}</div>"
    )
    return _document(title, body, head=refresh)


def page_document(nonce: str = "") -> str:
    """GET /: the page where a person types a text and sees it explained."""
    attr = f' nonce="{html.escape(nonce)}"' if nonce else ""
    page = _asset("page.html")
    return page.replace(
        "<!--style-->", f"<style{attr}>\n{_asset('clarion.css')}\n{_asset('page.css')}</style>"
    ).replace("<!--script-->", f"<script{attr}>\n{_asset('clarion.js')}\n{_asset('page.js')}</script>")


def _document(title: str, body: str, head: str = "") -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n{head}\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
