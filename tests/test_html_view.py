"""The HTML view over real HTTP: `Accept: text/html` on POST /invocations and GET /explanations/<id>,
the page of GET /, escaping of user text, the Content-Security-Policy, and JSON unchanged otherwise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.render.html import script_json
from tests.support import Service, running_service, wait_healthy

XSS = "<img src=x onerror=alert(1)> </script><script>alert(2)</script> & \u2028 superb"
HTML = {"Accept": "text/html"}


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true"}
    with running_service(tmp_path_factory.mktemp("html"), env) as running:
        wait_healthy(running)
        yield running


def embedded(document: str) -> dict:
    """The JSON the view draws from (inside its script element)."""
    match = re.search(r'<script type="application/json" class="clarion-data">(.*?)</script>', document, re.S)
    assert match, document[:500]
    return json.loads(match.group(1))


def test_invocations_in_html_carry_the_same_results_as_json(service: Service) -> None:
    request = {"data": ["i loved this film .", XSS], "explain": True, "granularity": "word", "max_evals": 60}
    as_json = service.post("/invocations", json=request).json()
    response = service.post("/invocations", json=request, headers=HTML)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    document = response.text
    assert document.startswith("<!doctype html>") and "Accept" in response.headers["Vary"]
    data = embedded(document)
    assert [item["text"] for item in data["results"]] == request["data"]
    assert [item["result"] for item in data["results"]] == as_json


def test_user_text_never_becomes_markup(service: Service) -> None:
    request = {"data": XSS, "explain": True, "max_evals": 40}
    response = service.post("/invocations", json=request, headers=HTML)
    document = response.text
    # The only script elements are Clarion's own; the text is inside JSON with < > & escaped.
    assert "<img" not in document
    assert document.count("<script") == 2 and "</script><script>alert" not in document
    assert script_json(XSS) in document and "\u2028" not in document
    assert embedded(document)["results"][0]["text"] == XSS


def test_the_policy_lets_only_clarions_own_script_run(service: Service) -> None:
    response = service.post("/invocations", json={"data": "good film ."}, headers=HTML)
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert re.findall(r"<script(?: [^>]*)?>", response.text) == [
        '<script type="application/json" class="clarion-data">',
        f'<script nonce="{nonce}">',
    ]
    again = service.post("/invocations", json={"data": "good film ."}, headers=HTML)
    assert again.headers["Content-Security-Policy"] != policy  # a fresh nonce per response


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html;q=0.5"])
def test_json_stays_the_default(service: Service, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = service.post("/invocations", json={"data": "good film ."}, headers=headers)
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["prediction"]


def test_a_job_in_html(service: Service) -> None:
    job = service.post("/explanations", json={"data": [XSS, "bad ."], "max_evals": 40}).json()
    response = service.get(f"/explanations/{job['id']}", headers=HTML)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    data = embedded(response.text)
    assert [item["text"] for item in data["results"]] == [XSS, "bad ."]
    assert [item["result"] for item in data["results"]] == job["result"]
    missing = service.get("/explanations/" + "0" * 32, headers=HTML)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_page_is_self_contained(service: Service) -> None:
    response = service.get("/", headers=HTML)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert "Clarion.render" in page and 'id="granularity"' in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no CDN, nothing fetched from elsewhere


def test_with_api_keys_the_page_opens_and_the_view_needs_a_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true", "API_KEYS": "key-one-key-one-key-one"}
    with running_service(tmp_path, env) as keyed:
        wait_healthy(keyed)
        assert keyed.get("/", headers=HTML).status_code == 200
        refused = keyed.post("/invocations", json={"data": "good ."}, headers=HTML)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        key = {"Authorization": "Bearer key-one-key-one-key-one"}
        allowed = keyed.post("/invocations", json={"data": "good ."}, headers=HTML | key)
        assert allowed.status_code == 200 and allowed.headers["Content-Type"].startswith("text/html")
