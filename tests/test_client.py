"""The Python client (clarion_client) against a real `clarion serve` over a real socket: classify,
explain with every option, jobs inline and on a real Redis and Celery worker, analyses inline and
from and to S3, API keys and errors; retries and timeouts against loopback servers that answer 503,
drop connections or stall on purpose; and the round trip of a served explanation through
shap.plots.text and shap.plots.bar."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clarion_client import (
    API_VERSION,
    BadRequest,
    Clarion,
    ConnectionFailed,
    IncompatibleServer,
    JobFailed,
    NotFound,
    Progress,
    RetryPolicy,
    ServerError,
    ServiceUnavailable,
    TimedOut,
    Unauthorized,
    WaitTimedOut,
    shap_explanation,
)
from clarion_client.retries import retry_after_seconds

from tests.support import (
    Service,
    assert_close_to_scale,
    assert_same_prediction,
    aws_env,
    free_port,
    job_stack,
    running_service,
    s3_client,
    s3_server,
    wait_healthy,
)
from tests.test_jobs import ENDLESS_JOB

KEY = "client-test-key-0123456789"
BUCKET = "datasets"
TEXT = "i loved this film , the acting was superb ."
TEXTS = ["the plot was boring and the acting awful .", "a great story , really superb !"]
ROWS = [{"review": text, "gold": gold} for text, gold in [(TEXTS[0], "negative"), (TEXTS[1], "positive")] * 3]
QUICK = {"max_evals": 40}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """Single-process mode (no broker): jobs and analyses run within their request."""
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "TORCH_THREADS": "1",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",  # so that /ping's 200 means the process that answers is ready
        "API_KEYS": KEY,
        "S3_ALLOWED_PREFIXES": f"s3://{BUCKET}/",
        **aws_env(s3_endpoint),
    }
    with running_service(tmp_path_factory.mktemp("client"), env) as running:
        wait_healthy(running)
        yield running


@pytest.fixture(scope="module")
def clarion(service: Service) -> Clarion:
    return Clarion(service.url, api_key=KEY, timeout=120)


# ---- classify and explain ---------------------------------------------------------------------


def test_classify_a_text_and_a_list(clarion: Clarion) -> None:
    assert clarion.health()["status"] == "healthy"
    one = clarion.classify(TEXT)
    assert {p["label"] for p in one["prediction"]} == {"negative", "neutral", "positive"}
    assert sum(p["score"] for p in one["prediction"]) == pytest.approx(1.0, abs=1e-5)
    assert "explanation" not in one
    many = clarion.classify([TEXT, *TEXTS])
    assert len(many) == 3
    assert_same_prediction(many[0]["prediction"], one["prediction"])


def test_explain_forwards_every_option(clarion: Clarion) -> None:
    result = clarion.explain(
        TEXT,
        max_evals=64,
        granularity="word",
        labels=["positive", "negative"],
        output="logit",
        seed=3,
        precision="exact",
        masking="tokens",
        long_text="truncate",
        batch_size=2,
        faithfulness=True,
    )
    parameters = result["explanation_parameters"]
    assert parameters["output"] == "logit" and parameters["granularity"] == "word"
    assert (parameters["max_evals"], parameters["seed"], parameters["batch_size"]) == (64, 3, 2)
    assert parameters["precision"] == "exact" and parameters["masking"] == "tokens"
    assert list(result["base_values"]) == ["positive", "negative"]
    assert set(result["faithfulness"]) == {"positive", "negative"}
    units = [unit for unit, _ in result["explanation"]]
    assert [TEXT[start:end] for start, end in result["offsets"]] == units
    for label, base in result["base_values"].items():
        total = base + sum(values[label] for _, values in result["explanation"])
        assert total == pytest.approx(result["model_output"][label], abs=1e-5)


def test_errors_carry_status_code_message_and_request_id(
    clarion: Clarion, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BadRequest) as refused:
        clarion.explain(TEXT, labels=["nope"])
    error = refused.value
    assert (error.status, error.code) == (400, "invalid_request") and "nope" in error.message
    assert error.request_id and error.request_id in str(error)

    with pytest.raises(Unauthorized) as wrong:
        Clarion(service.url, api_key="wrong-key-0123456789").classify(TEXT)
    assert (wrong.value.status, wrong.value.code) == (401, "unauthorized")
    monkeypatch.setenv("CLARION_API_KEY", KEY)
    assert Clarion(service.url).classify(TEXT)["prediction"]  # the key from the environment
    with pytest.raises(Unauthorized):
        Clarion(service.url, api_key="").classify(TEXT)  # "" sends none, whatever the environment says

    with pytest.raises(NotFound) as missing:
        clarion.job("no-such-job")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(ValueError, match="http"):
        Clarion("localhost:8080")


# ---- jobs and analyses in single-process mode ---------------------------------------------------


def test_a_job_in_single_process_mode_comes_back_finished(clarion: Clarion) -> None:
    job = clarion.submit(TEXTS, **QUICK)
    assert job.status == "succeeded" and job.finished and job.texts == TEXTS
    assert job.progress == Progress(80, 80)  # max_evals per text
    seen: list[Any] = []
    assert clarion.wait(job, progress=seen.append) == job and seen == [job]  # nothing to poll
    synchronous = clarion.explain(TEXTS, **QUICK)
    for from_job, direct in zip(job.result, synchronous, strict=True):
        assert [u for u, _ in from_job["explanation"]] == [u for u, _ in direct["explanation"]]
        assert from_job["base_values"] == pytest.approx(direct["base_values"])

    again = clarion.refresh(job)
    assert again.status == "succeeded" and again.texts == TEXTS and again.result == job.result
    assert clarion.delete(job) is None  # finished: removed
    with pytest.raises(NotFound):
        clarion.refresh(job)


def test_an_analysis_in_single_process_mode(clarion: Clarion) -> None:
    analysis = clarion.analyze(
        ROWS, text_field="review", label_field="gold", faithfulness=False, top_k=5, **QUICK
    )
    assert analysis.status == "succeeded" and analysis.lines == analysis.texts == len(ROWS)
    assert clarion.wait(analysis) == analysis
    document = analysis.analysis
    assert document is not None and document["clarion"]["texts"] == len(ROWS)
    assert set(document["explanations"]["kernel_shap"]) == {"negative", "neutral", "positive"}
    assert document["clarion"]["options"]["top_k"] == 5
    report = clarion.report(analysis)
    assert report.startswith("<!doctype html>") and "What drives each label" in report
    assert clarion.analysis(analysis.id).analysis == document
    assert clarion.delete(analysis) is None
    with pytest.raises(NotFound):
        clarion.analysis(analysis.id)

    table = "id;review\n" + "".join(f'{i};"{row["review"]}"\n' for i, row in enumerate(ROWS))
    from_csv = clarion.analyze(csv=table, text_field="review", delimiter=";", **QUICK)
    assert from_csv.status == "succeeded" and from_csv.texts == len(ROWS)
    with pytest.raises(ValueError, match="exactly one"):
        clarion.analyze(ROWS, csv=table)


def test_an_analysis_from_and_to_s3(clarion: Clarion, s3_endpoint: str) -> None:
    s3 = s3_client(s3_endpoint)
    lines = "".join(json.dumps(row) + "\n" for row in ROWS)
    s3.put_object(Bucket=BUCKET, Key="in/reviews.jsonl", Body=lines.encode())
    analysis = clarion.analyze(
        s3_input=f"s3://{BUCKET}/in/reviews.jsonl",
        s3_output=f"s3://{BUCKET}/out/run-1/",
        text_field="review",
        faithfulness=False,
        **QUICK,
    )
    assert analysis.status == "succeeded" and analysis.input == f"s3://{BUCKET}/in/reviews.jsonl"
    written = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/run-1/")["Contents"]}
    assert written == {f"out/run-1/{name}" for name in ("analysis.json", "records.jsonl", "report.html")}
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key="out/run-1/analysis.json")["Body"].read())
    assert stored == analysis.analysis


# ---- the round trip through shap.plots ----------------------------------------------------------


def test_shap_plots_text_and_bar_draw_a_served_explanation(clarion: Clarion, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    result = clarion.explain(TEXT, max_evals=64)  # SHAP's own players: the model's tokens
    explanation = shap_explanation(result, TEXT)
    units = [unit for unit, _ in result["explanation"]]
    assert explanation.shape == (len(units), 3)
    assert list(explanation.output_names) == list(result["base_values"])
    assert units[0] == "[CLS]" and units[-1] == "[SEP]" and explanation.data[0] == explanation.data[-1] == ""
    assert "".join(explanation.data) == TEXT  # each token with its trailing space, as shap's Text masker
    assert explanation.data[1] == "i " and list(explanation.feature_names) == units

    positive = explanation[:, "positive"]
    html = shap.plots.text(positive, display=False)
    for unit, values in result["explanation"][1:-1]:
        assert unit in html
        assert str(np.float64(values["positive"]).round(3)) in html  # shap shows each value to 3 places
    base, output = result["base_values"]["positive"], result["model_output"]["positive"]
    assert positive.base_values == pytest.approx(base)
    assert positive.base_values + positive.values.sum() == pytest.approx(output, abs=1e-5)
    every_label = shap.plots.text(explanation, display=False)  # a tab per label
    assert all(f">{label}</div>" in every_label for label in result["base_values"])

    shap.plots.bar(positive, show=False)
    plt.savefig(tmp_path / "bar.png")
    plt.close("all")
    png = (tmp_path / "bar.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000

    # Several texts: one Explanation with ragged rows, as shap's Partition explainer gives.
    results = clarion.explain(TEXTS, granularity="word", **QUICK)
    several = shap_explanation(results, TEXTS)
    assert several.shape == (2, None, 3)
    assert ["".join(row.data) for row in several] == TEXTS
    html = shap.plots.text(several, display=False)
    assert all(word in html for text in TEXTS for word in text.split())
    shap.plots.bar(several[:, :, "positive"].mean(0), show=False)  # mean per word over the texts
    plt.savefig(tmp_path / "mean.png")
    plt.close("all")
    assert (tmp_path / "mean.png").read_bytes().startswith(b"\x89PNG")

    # Without the texts, each is rebuilt from its units and offsets.
    assert "".join(shap_explanation(result).data) == TEXT
    with pytest.raises(ValueError, match="does not hold the unit"):
        shap_explanation(results, list(reversed(TEXTS)))


def test_results_that_explain_different_labels_are_not_one_explanation() -> None:
    def result(label: str) -> dict[str, Any]:
        return {
            "explanation": [["good", {label: 0.5}]],
            "offsets": [[0, 4]],
            "base_values": {label: 0.25},
            "model_output": {label: 0.75},
        }

    with pytest.raises(ValueError, match="same labels"):
        shap_explanation([result("positive"), result("negative")], ["good", "good"])
    assert shap_explanation(result("positive"), "good").shape == (1, 1)
    with pytest.raises(ValueError, match="no explanation"):
        shap_explanation({"prediction": [], "truncated": False, "model": "m"})


# ---- retries and timeouts, against loopback servers that misbehave on purpose -------------------

DROP = "drop"  # read the request, then close the connection without answering
PREDICTION = {"prediction": [{"label": "positive", "score": 1.0}], "truncated": False, "model": "m"}
JOB = {"id": "j1", "status": "queued", "submitted_at": "now", "finished_at": None, "prediction": []}


def answer(status: int, body: Any, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return status, raw, {"Content-Type": "application/json", **headers}


def error(status: int, code: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    return answer(status, {"error": {"code": code, "message": f"{code} here"}}, **headers)


class ScriptedServer:
    """An HTTP server on loopback that gives the scripted answers in turn (the last one again once
    the script runs out) and records every request it read; /ping answers as a Clarion of API
    `api_version` does, outside the script (the client asks it once, first)."""

    def __init__(
        self, *script: Any, delay: float = 0.0, api_version: str | None = API_VERSION, ping: Any = None
    ) -> None:
        self.script, self.delay, self.requests, self.pings = list(script), delay, [], 0
        healthy = {"status": "healthy"} | ({"api_version": api_version} if api_version else {})
        ping = ping or answer(200, healthy)
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    self.close_connection = True
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                self.close_connection = True
                if self.path == "/ping":
                    scripted.pings += 1
                    status, raw, headers = ping
                    self.send_response(status)
                    for name, value in {**headers, "Content-Length": str(len(raw))}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                scripted.requests.append((self.command, self.path, dict(self.headers), body))
                step = scripted.script.pop(0) if len(scripted.script) > 1 else scripted.script[0]
                time.sleep(scripted.delay)
                self.close_connection = True
                if step == DROP:
                    return
                status, raw, headers = step
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(raw))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


FAST = RetryPolicy(attempts=3, backoff=0.01)


def test_a_503_with_retry_after_is_retried_after_that_many_seconds() -> None:
    loading = error(503, "model_not_ready", **{"Retry-After": "1"})
    with ScriptedServer(loading, answer(200, PREDICTION)) as server:
        started = time.monotonic()
        assert Clarion(server.url, api_key=KEY).classify("good") == PREDICTION
        assert time.monotonic() - started >= 0.95
    (first, second) = server.requests
    assert first[2]["X-Request-Id"] == second[2]["X-Request-Id"]  # one call, one id in the server's log
    assert second[2]["Authorization"] == f"Bearer {KEY}"

    in_a_second = formatdate(time.time() + 1, usegmt=True)
    limited = error(429, "rate_limited", **{"Retry-After": in_a_second})
    with ScriptedServer(limited, answer(200, JOB)) as server:
        job = Clarion(server.url).submit("good")  # a 429 did nothing: even a job's POST is retried
        assert job.id == "j1" and job.status == "queued" and len(server.requests) == 2


def test_retry_after_reads_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7", now) == 7.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # already past
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None) is None


def test_retries_are_bounded_and_skip_what_would_fail_again() -> None:
    with ScriptedServer(error(503, "job_backend_unavailable")) as server:
        with pytest.raises(ServiceUnavailable) as failed:
            Clarion(server.url, retry=FAST).classify("good")
        assert failed.value.code == "job_backend_unavailable" and len(server.requests) == 3

    with ScriptedServer(error(503, "model_not_ready", **{"Retry-After": "3600"})) as server:
        with pytest.raises(ServiceUnavailable) as later:
            Clarion(server.url, retry=FAST).classify("good")
        assert later.value.retry_after == 3600 and len(server.requests) == 1  # too long: the caller decides

    with ScriptedServer(error(503, "explanation_timeout")) as server:
        with pytest.raises(ServiceUnavailable):
            Clarion(server.url, retry=FAST).explain("good")
        assert len(server.requests) == 1  # the same work would run into the same deadline

    proxy_page = answer(502, b"<html>bad gateway</html>", **{"Content-Type": "text/html"})
    with ScriptedServer(proxy_page) as server:
        with pytest.raises(ServerError) as failed:
            Clarion(server.url, retry=FAST).classify("good")
        assert (failed.value.status, failed.value.code) == (502, "http_502")
        assert failed.value.message == "Bad Gateway"  # the status's reason: the page is not Clarion's
        assert len(server.requests) == 1


def test_a_dropped_connection_is_retried_only_where_repeating_is_safe() -> None:
    with ScriptedServer(DROP, answer(200, JOB)) as server:
        job = Clarion(server.url, retry=FAST).submit("good")  # repeated with its Idempotency-Key
        assert job.id == "j1" and len(server.requests) == 2
        keys = [headers.get("Idempotency-Key") for _, _, headers, _ in server.requests]
        assert keys[0] and keys[0] == keys[1]  # one key for every try: the server makes one job
        assert Clarion(server.url, retry=FAST).job("j1").id == "j1"  # a GET is repeated
    with ScriptedServer(answer(202, JOB), answer(202, JOB)) as server:
        Clarion(server.url).submit("good")
        Clarion(server.url).submit("good")
        first, second = (headers["Idempotency-Key"] for _, _, headers, _ in server.requests)
        assert first != second  # a new call is a new job

    with ScriptedServer(DROP, answer(202, {"id": "a1", "status": "queued"})) as server:
        with contextlib.suppress(Exception):
            Clarion(server.url, retry=FAST).analyze([{"text": "good"}])
        keys = [headers.get("Idempotency-Key") for _, _, headers, _ in server.requests]
        assert len(keys) == 2 and keys[0] and keys[0] == keys[1]

    with ScriptedServer(DROP, answer(200, PREDICTION)) as server:
        assert Clarion(server.url, retry=FAST).explain("good") == PREDICTION  # /invocations stores nothing
        assert len(server.requests) == 2

    with ScriptedServer(answer(200, JOB), DROP, answer(200, JOB)) as server:
        job = Clarion(server.url).job("j1")
        with pytest.raises(ConnectionFailed):
            Clarion(server.url, retry=FAST).delete(job)  # a second DELETE would remove what it cancelled
        assert [method for method, *_ in server.requests] == ["GET", "DELETE"]

    unavailable = error(503, "job_backend_unavailable", **{"Retry-After": "0"})
    with ScriptedServer(answer(200, JOB), unavailable, answer(200, JOB)) as server:
        job = Clarion(server.url).job("j1")
        with pytest.raises(ServiceUnavailable):
            Clarion(server.url, retry=FAST).delete(job)  # the cancel may be stored: not repeated
        assert [method for method, *_ in server.requests] == ["GET", "DELETE"]
    limited = error(429, "rate_limited", **{"Retry-After": "0"})
    with ScriptedServer(answer(200, JOB), limited, answer(204, b"")) as server:
        job = Clarion(server.url).job("j1")
        assert Clarion(server.url, retry=FAST).delete(job) is None  # a 429 did nothing: repeated
        assert [method for method, *_ in server.requests] == ["GET", "DELETE", "DELETE"]

    with pytest.raises(ConnectionFailed) as refused:  # nobody listens: the server saw nothing
        Clarion(f"http://127.0.0.1:{free_port()}", retry=FAST).submit("good")
    assert not refused.value.sent


def test_a_call_past_its_timeout_fails_at_once() -> None:
    with ScriptedServer(answer(200, PREDICTION), delay=1.0) as server:
        started = time.monotonic()
        with pytest.raises(TimedOut) as late:
            Clarion(server.url, timeout=0.3).classify("good")
        assert time.monotonic() - started < 1.5 and late.value.sent and len(server.requests) == 1
        assert Clarion(server.url, timeout=0.3).classify("good", timeout=5) == PREDICTION  # per call


# ---- jobs on a real Redis and a real Celery worker ---------------------------------------------


@pytest.fixture(scope="module")
def brokered(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "WORKER_CONCURRENCY": "1",
        "TORCH_THREADS": "1",
        "MAX_EVALS_LIMIT": "200000",
        # A job the test fails to cancel still ends, and quickly.
        "JOB_SOFT_TIME_LIMIT": "10",
        "JOB_TIME_LIMIT": "12",
        "JOB_VISIBILITY_TIMEOUT": "14",
        "EXPLANATION_CACHE_SIZE": "0",  # the job computes its explanation, not the cache
    }
    with job_stack(tmp_path_factory.mktemp("client-jobs"), env) as stack:
        yield Clarion(stack.api.url, timeout=60)


def test_a_job_on_a_worker_is_waited_for_with_its_progress(brokered: Clarion) -> None:
    job = brokered.submit(TEXT, max_evals=300, seed=11)
    assert job.status == "queued" and job.result is None and job.prediction
    seen: list[Any] = []
    done = brokered.wait(job, interval=0.05, progress=seen.append)
    assert done.status == "succeeded" and done.progress == Progress(300, 300)
    assert seen[0] == job and seen[-1] == done
    assert {state.status for state in seen} <= {"queued", "running", "succeeded"}
    synchronous = brokered.explain(TEXT, max_evals=300, seed=11)
    values = np.array([list(v.values()) for _, v in done.result["explanation"]])
    expected = np.array([list(v.values()) for _, v in synchronous["explanation"]])
    # Another process, maybe other passes: float32 noise of the scale (tests/test_jobs.py).
    assert_close_to_scale(values, expected, rel=1e-4)
    assert shap_explanation(done.result, done.texts).shape == (len(values), 3)  # the texts came along
    assert brokered.delete(done) is None


def test_a_running_job_is_cancelled_from_its_progress_callback(brokered: Clarion) -> None:
    options = {k: v for k, v in ENDLESS_JOB.items() if k != "data"}
    job = brokered.submit(ENDLESS_JOB["data"], **options)
    with pytest.raises(WaitTimedOut) as waited:
        brokered.wait(job, timeout=0.2, interval=0.05)
    assert waited.value.job.status in {"queued", "running"}

    cancelled: list[Any] = []

    def cancel_once_it_runs(state: Any) -> None:
        if not cancelled and state.status == "running" and state.progress and state.progress.done > 0:
            cancelled.append(brokered.delete(state))

    with pytest.raises(JobFailed) as failed:
        brokered.wait(job, interval=0.05, progress=cancel_once_it_runs)
    assert failed.value.code == "cancelled" and failed.value.job.status == "cancelled"
    assert cancelled[0].status == "cancelled"  # a running job's DELETE cancels it (200)
    assert brokered.delete(failed.value.job) is None  # a finished one's removes it (204)
    with pytest.raises(NotFound):
        brokered.job(job.id)


def test_the_servers_api_version_is_checked_once_before_the_first_call() -> None:
    with ScriptedServer(answer(200, PREDICTION)) as server:
        clarion = Clarion(server.url, retry=FAST)
        assert clarion.classify("good") == PREDICTION and clarion.classify("good") == PREDICTION
        assert server.pings == 1 and [m for m, *_ in server.requests] == ["POST", "POST"]

    with ScriptedServer(answer(200, PREDICTION), api_version="2.0") as server:
        with pytest.raises(IncompatibleServer, match=r"API 2\.0.*speaks API 1\."):
            Clarion(server.url, retry=FAST).classify("good")
        assert server.requests == []  # refused before anything it would misread was sent

    older = ScriptedServer(answer(200, PREDICTION), api_version=None)  # a server from before the check
    with older as server, pytest.warns(UserWarning, match="does not say which Clarion API") as warned:
        assert Clarion(server.url, retry=FAST).classify("good") == PREDICTION
    assert warned[0].filename == __file__  # it names the caller's line, not the client's

    # Not a Clarion's /ping (a gateway that exposes /invocations alone): the call goes on unchecked.
    gateway = ScriptedServer(
        answer(200, PREDICTION), ping=answer(404, b"<html>no</html>", **{"Content-Type": "text/html"})
    )
    with gateway as server:
        assert Clarion(server.url, retry=FAST).classify("good") == PREDICTION


def test_a_real_server_says_the_api_version_the_client_speaks(service: Service) -> None:
    assert Clarion(service.url).health()["api_version"] == API_VERSION
