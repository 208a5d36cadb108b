"""The analysis report (shared/render/report.py): a real DatasetAnalysis of synthetic API bodies and a
drift comparison, rendered, checked as HTML, then opened from a file in Debian's headless chromium
(selenium), where it must draw, stay inert and ask the network for nothing. `.ci/run` sets
CLARION_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping the browser test."""

from __future__ import annotations

import json
import os
import re
import shutil
from html import escape
from pathlib import Path

import pytest

from shared.analysis.aggregate import AnalysisOptions, DatasetAnalysis
from shared.analysis.drift import compare
from shared.analysis.units import Normalizer
from shared.render.report import analysis_report
from tests.support import REPO, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
OUTPUT = Path(os.environ.get("CLARION_TEST_OUTPUT", REPO / "test-output"))
RED, BLUE = (255, 0, 81), (0, 139, 251)

XSS = '<img src=x onerror="window.__pwned=1">'
# Each unit's attribution to "positive"; "negative" gets the opposite. Other units get 0.01.
WEIGHTS = {
    "superb": 0.3,
    "great": 0.25,
    XSS: 0.2,
    "film": 0.02,
    "plot": -0.03,
    "not": -0.15,
    "boring": -0.2,
    "awful": -0.3,
}
# The baseline run leaned on other words: "film" and "plot" were its strongest units.
BASELINE_WEIGHTS = WEIGHTS | {"film": 0.35, "plot": 0.32, "superb": 0.05}
TEXTS = [  # (units, true label); the model predicts "positive" when the units sum above 0
    (["a", "superb", "film"], "positive"),
    (["a", "great", "plot"], "positive"),
    (["awful", "boring", "film"], "negative"),
    (["not", "a", "great", "film"], "negative"),  # wrong: "great" outweighs "not"
    (["not", "great", ",", "not", "superb"], "negative"),  # wrong
    ([XSS, "great", "film"], "negative"),  # wrong, and the surest error
    (["boring", "plot"], "negative"),
    (["great", "but", "boring"], "positive"),
    (["awful", "film"], "positive"),  # wrong the other way
]
ERRORS = 4


def api_body(units: list[str], weights: dict[str, float]) -> dict:
    """The API's per-text body for `" ".join(units)`, explained by word for both labels."""
    offsets, start = [], 0
    for unit in units:
        offsets.append([start, start + len(unit)])
        start += len(unit) + 1
    up = [weights.get(unit, 0.01) for unit in units]
    positive = 0.5 + sum(up)
    scores = {"negative": 1 - positive, "positive": positive}
    return {
        "prediction": [{"label": k, "score": v} for k, v in sorted(scores.items(), key=lambda kv: -kv[1])],
        "truncated": False,
        "model": "tiny-sst2",
        "explanation": [[unit, {"negative": -v, "positive": v}] for unit, v in zip(units, up, strict=True)],
        "offsets": offsets,
        "base_values": {"negative": 0.5, "positive": 0.5},
        "model_output": scores,
        "explanation_parameters": {
            "output": "probabilities",
            "granularity": "word",
            "long_text": "truncate",
            "windows": 1,
            "max_evals": 100,
            "evaluations": 64,
            "seed": 0,
            "precision": "fp32",
            "batch_size": 50,
            "masking": "tokens",
        },
        "faithfulness": {
            label: {"comprehensiveness": 0.3 + 0.1 * i, "sufficiency": 0.05 * (i + 1)}
            for i, label in enumerate(scores)
        },
    }


def analysis_document(weights: dict[str, float]) -> dict:
    # No normalisation, so the markup-like unit reaches the report exactly as a user wrote it.
    analysis = DatasetAnalysis(AnalysisOptions(top_k=5, normalizer=Normalizer(False, False)))
    for line, (units, truth) in enumerate(TEXTS, start=1):
        analysis.add(line, " ".join(units), api_body(units, weights), truth)
    analysis.skip()
    return json.loads(json.dumps(analysis.document()))  # as analysis.json is read back


@pytest.fixture(scope="module")
def document() -> dict:
    return analysis_document(WEIGHTS)


@pytest.fixture(scope="module")
def comparison(document: dict) -> dict:
    return compare(analysis_document(BASELINE_WEIGHTS), document, top_k=5, threshold=0.9)


@pytest.fixture(scope="module")
def report(document: dict, comparison: dict) -> str:
    return analysis_report(document, comparison, title="Reviews <analysis>")


def test_the_report_has_every_section_and_the_analysis_numbers(report: str, comparison: dict) -> None:
    for section in ("labels", "cohorts", "faithfulness", "errors", "drift"):
        assert f'<section id="{section}">' in report
    assert "<title>Reviews &lt;analysis&gt;</title>" in report
    for fact in ("tiny-sst2", "55.6% of 9 texts with a true label", "mean_abs", "word", ">none<", ">100<"):
        assert fact in report, fact
    assert "<dt>skipped</dt><dd>1</dd>" in report
    assert "higher comprehensiveness and lower sufficiency are better" in report
    assert "<th>predicted:positive (6 texts)</th><th>correct (5 texts)</th><th>wrong (4 texts)</th>" in report
    drifted = [label for label, entry in comparison["labels"].items() if entry["drifted"]]
    assert drifted and report.count('class="badge drifted"') == len(drifted)
    for entry in comparison["labels"].values():
        assert f"nDCG {entry['ndcg']:.4f}" in report


def test_an_analysis_compared_with_itself_has_not_drifted(document: dict) -> None:
    page = analysis_report(document, compare(document, document))
    assert page.count('class="badge ok"') == 2 and "badge drifted" not in page
    assert page.count("nDCG 1.0000") == 2


def test_the_report_is_self_contained_and_user_text_is_escaped(report: str) -> None:
    assert not re.search(r"https?:", report)
    assert not re.search(r"<(link|img|iframe|object|embed)\b|@import|url\(", report, re.IGNORECASE)
    assert re.findall(r"<script[^>]*>", report) == [
        '<script type="application/json" class="clarion-data">',
        "<script>",
    ]
    assert XSS not in report
    markup = re.sub(r"<script.*?</script>", "", report, flags=re.DOTALL)
    assert "onerror=" not in markup.replace(escape(XSS), "")  # outside scripts: only as escaped text
    assert "\\u003cimg src=x onerror" in report  # inside: JSON that cannot close its element
    assert f'<span class="term" title="{escape(XSS)}">{escape(XSS)}</span>' in report  # a bar's label


def test_the_report_without_a_comparison_or_errors() -> None:
    analysis = DatasetAnalysis(AnalysisOptions())
    analysis.add(1, "a superb film", api_body(["a", "superb", "film"], WEIGHTS))
    page = analysis_report(analysis.document())
    assert '<section id="drift">' not in page and "accuracy" not in page
    assert '<section id="errors"><h2>Worst errors</h2><p class="note">none</p></section>' in page


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CLARION_REQUIRE_BROWSER") == "1":
            raise RuntimeError("CLARION_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,1400")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def rgb(colour: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"[\d.]+", colour)[:3])


def test_the_report_draws_offline_in_a_browser(browser, report: str, tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    path.write_text(report, encoding="utf-8")
    browser.get(path.as_uri())
    wait_until(
        lambda: browser.execute_script("return document.querySelectorAll('.clarion .unit').length"),
        20,
        what="the worst errors drawn by clarion.js",
    )

    # Bars: drawn, coloured by sign, and as long as their value (one scale per label).
    bars = browser.execute_script(
        """return Array.from(document.querySelectorAll('article.label')).map(function (label) {
             return Array.from(label.querySelectorAll('.bar-row')).map(function (row) {
               var bar = row.querySelector('.hbar');
               return {width: bar.getBoundingClientRect().width, cls: bar.getAttribute('class'),
                       colour: getComputedStyle(bar).fill,
                       value: parseFloat(row.querySelector('.num').textContent)}; }); });"""
    )
    assert len(bars) == 2
    for label_bars in bars:
        assert len(label_bars) >= 6
        widest = max(label_bars, key=lambda b: abs(b["value"]))
        for bar in label_bars:
            assert bar["width"] > 0, bar
            assert rgb(bar["colour"]) == (RED if bar["value"] > 0 else BLUE), bar
            expected = widest["width"] * abs(bar["value"]) / abs(widest["value"])
            assert bar["width"] == pytest.approx(max(expected, 2), abs=1.5), bar

    # The worst errors: one card each, their units shaded by clarion.js, user markup shown as text.
    assert len(browser.find_elements("css selector", ".clarion .card")) == ERRORS
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('.clarion .unit')).map(u => u.textContent)"
    )
    assert XSS in shown and "great" in shown
    assert browser.execute_script("return window.__pwned") is None
    assert browser.execute_script("return document.images.length") == 0

    # Offline: nothing but the file itself was requested, and no script failed.
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    requests = [
        message["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if (message := json.loads(entry["message"])["message"])["method"] == "Network.requestWillBeSent"
    ]
    assert set(requests) == {path.as_uri()}, requests
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "analysis-report.html").write_text(report, encoding="utf-8")
    assert browser.save_screenshot(str(OUTPUT / "analysis-report.png"))
