"""The web page and the HTML view in a real browser: Debian's headless chromium, driven by selenium,
against a real `clarion serve` on the team's sentiment model. `.ci/run` installs the browser and sets
CLARION_REQUIRE_BROWSER=1, so there a missing browser fails instead of skipping."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import requests

from tests.support import (
    REPO,
    TEAM_KIT,
    Service,
    assert_close_to_scale,
    running_service,
    wait_healthy,
    wait_until,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CLARION_REQUIRE_BROWSER") == "1":
        raise RuntimeError("CLARION_REQUIRE_BROWSER=1 but chromium / chromedriver are not installed")
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

OUTPUT = Path(os.environ.get("CLARION_TEST_OUTPUT", REPO / "test-output"))
XSS = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> a superb film'
RED, BLUE = (255, 0, 81), (0, 139, 251)


@pytest.fixture(scope="module")
def service(sst2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {"MODEL_DIR": str(sst2_dir), "SERVERLESS": "true"}
    with running_service(tmp_path_factory.mktemp("page"), env) as running:
        wait_healthy(running)
        yield running


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,1400")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def units(driver) -> list[dict]:
    """Every shaded unit on the page: its text, value, class and background colour."""
    return driver.execute_script(
        """return Array.from(document.querySelectorAll('#result .unit, .clarion .unit')).map(function (u) {
             return {text: u.textContent, value: parseFloat(u.dataset.value), cls: u.className,
                     colour: getComputedStyle(u).backgroundColor, title: u.title}; });"""
    )


def rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(v) for v in re.findall(r"[\d.]+", colour)[:3])  # type: ignore[return-value]


def assert_shaded_by_sign(shown: list[dict]) -> None:
    assert shown
    for unit in shown:
        if unit["value"] > 0:
            assert rgb(unit["colour"]) == RED and "pos" in unit["cls"], unit
        elif unit["value"] < 0:
            assert rgb(unit["colour"]) == BLUE and "neg" in unit["cls"], unit
        assert re.search(r": [+-]?\d", unit["title"]), unit  # the exact value on hover


def explain_on_page(
    driver,
    service: Service,
    text: str,
    granularity: str = "word",
    job: bool = False,
    long_text: str = "truncate",
    max_evals: int = 500,
) -> None:
    driver.get(service.url + "/")
    wait_until(
        lambda: driver.find_element(By.ID, "model").text == "minilm-sst2", 30, what="/ping on the page"
    )
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    Select(driver.find_element(By.ID, "granularity")).select_by_value(granularity)
    Select(driver.find_element(By.ID, "long-text")).select_by_value(long_text)
    evals = driver.find_element(By.ID, "max-evals")
    evals.clear()
    evals.send_keys(str(max_evals))
    driver.find_element(By.ID, "submit-job" if job else "explain").click()

    def finished() -> bool:
        status = driver.find_element(By.ID, "status")
        return "explained with" in status.text or "error" in (status.get_attribute("class") or "")

    try:
        wait_until(finished, 120, what="the explanation on the page")
    finally:
        status = driver.find_element(By.ID, "status").text
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
    assert "explained with" in status, (status, logs)


def test_typed_text_is_explained_and_shaded_in_the_right_direction(
    browser, service: Service, downloads: Path
):
    text = "a wonderful , moving film with superb acting , though the ending drags ."
    explain_on_page(browser, service, text)
    shown = units(browser)
    assert [u["text"] for u in shown] == text.split(" ")  # word units, in order
    assert_shaded_by_sign(shown)
    # The page shows what the API computes for the same request.
    api = service.post(
        "/invocations", json={"data": text, "explain": True, "granularity": "word", "labels": "all"}
    ).json()
    assert api["prediction"][0]["label"] == "POSITIVE"
    positive = [values["POSITIVE"] for _, values in api["explanation"]]
    # Another request, maybe another HTTP process or backend: the same numbers up to the last bits.
    assert_close_to_scale([u["value"] for u in shown], positive, rel=1e-4)
    by_word = {u["text"]: u for u in shown}
    assert by_word["wonderful"]["value"] > 0 and rgb(by_word["wonderful"]["colour"]) == RED
    assert by_word["drags"]["value"] < 0 and rgb(by_word["drags"]["colour"]) == BLUE

    OUTPUT.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(OUTPUT / "page.png"))

    # Another label: every attribution flips (two labels), and so does every colour.
    Select(browser.find_element(By.CSS_SELECTOR, "#result select.label-select")).select_by_value("NEGATIVE")
    flipped = units(browser)
    assert [u["value"] for u in flipped] == pytest.approx([-v for v in positive], abs=1e-6)
    assert_shaded_by_sign(flipped)
    assert rgb({u["text"]: u for u in flipped}["wonderful"]["colour"]) == BLUE
    assert "NEGATIVE: base value" in browser.find_element(By.CSS_SELECTOR, "#result .strip").text

    browser.find_element(By.ID, "download").click()
    target = downloads / "clarion-explanation.json"
    wait_until(target.exists, 20, what="the downloaded JSON")
    downloaded = json.loads(target.read_text())["explanation"]
    assert [unit for unit, _ in downloaded] == [unit for unit, _ in api["explanation"]]
    assert_close_to_scale(
        [list(values.values()) for _, values in downloaded],
        [list(values.values()) for _, values in api["explanation"]],
        rel=1e-4,
    )


def test_user_text_stays_inert_on_the_page_and_in_the_view(browser, service: Service) -> None:
    explain_on_page(browser, service, XSS, granularity="sentence")
    assert browser.execute_script("return window.__xss") is None
    assert browser.find_elements(By.CSS_SELECTOR, "#result img, #result script") == []
    assert "<img src=x" in browser.find_element(By.CSS_SELECTOR, "#result .text").text

    job = service.post("/explanations", json={"data": XSS, "max_evals": 60}).json()
    browser.get(f"{service.url}/explanations/{job['id']}")  # a browser's own Accept asks for HTML
    wait_until(lambda: units(browser), 30, what="the job's view")
    assert_shaded_by_sign(units(browser))
    assert browser.execute_script("return window.__xss") is None
    assert browser.find_elements(By.CSS_SELECTOR, ".clarion img") == []
    assert browser.find_elements(By.CSS_SELECTOR, "script") == browser.find_elements(
        By.CSS_SELECTOR, "script[nonce], script.clarion-data"
    )


def test_a_long_document_sent_as_a_job_is_followed_to_its_end(browser, service: Service) -> None:
    rows = (TEAM_KIT / "data" / "sst2-dev.tsv").read_text().splitlines()[1:31]
    sentences = [row.split("\t", 1)[1].strip().capitalize() for row in rows]  # ~600 words: several windows
    text = " ".join(sentences[:15]) + "\n\n" + " ".join(sentences[15:])
    explain_on_page(
        browser, service, text, granularity="sentence", job=True, long_text="windows", max_evals=100
    )
    status = browser.find_element(By.ID, "status").text
    assert re.match(r"Job [0-9a-f]{32} succeeded: explained with \d+ evaluations", status), status
    head = browser.find_element(By.CSS_SELECTOR, "#result .card .head").text
    assert re.search(r"\d+ windows of 256 tokens", head), head
    shown = units(browser)
    assert len(shown) >= 10 and text.rstrip().endswith(shown[-1]["text"])  # nothing cut off
    assert_shaded_by_sign(shown)


def test_the_html_view_of_a_request_works_offline(browser, service: Service, tmp_path: Path) -> None:
    """The view POST /invocations returns with Accept: text/html, opened from a file (no server)."""
    response = requests.post(
        service.url + "/invocations",
        json={
            "data": ["a superb film .", "a dull , lifeless film ."],
            "explain": True,
            "granularity": "word",
        },
        headers={"Accept": "text/html"},
        timeout=120,
    )
    page = tmp_path / "view.html"
    page.write_text(response.text)
    browser.get(page.as_uri())
    wait_until(lambda: len(units(browser)) == 10, 20, what="the saved view")
    shown = units(browser)
    assert_shaded_by_sign(shown)
    # One colour scale for both texts: each unit's opacity is its |value| over the largest |value| of
    # either text (not of its own), so the two texts compare.
    alphas = [float(re.findall(r"[\d.]+", u["colour"])[3]) for u in shown]
    largest = max(abs(u["value"]) for u in shown)
    # (Chrome keeps an alpha in 8 bits: within 1/255 of the value asked for.)
    assert alphas == pytest.approx([0.85 * abs(u["value"]) / largest for u in shown], abs=1 / 255 + 1e-3)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card")) == 2
