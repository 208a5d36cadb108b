"""POST /analyses over real HTTP: inline in single-process mode, in chunks on two real Celery workers
(one of them killed mid-chunk), from and to a real S3-compatible server on loopback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import (
    REPO,
    Service,
    Worker,
    aws_env,
    base_env,
    job_stack,
    running_service,
    s3_client,
    s3_server,
    wait_healthy,
    wait_until,
)
from tests.test_analysis import REVIEWS, assert_same_analysis
from tests.test_jobs import LONG_REVIEW

BUCKET = "datasets"
LIMITS = {"ANALYSIS_MAX_TEXTS": "120", "ANALYSIS_MAX_BYTES": "20000", "ANALYSIS_CHUNK_TEXTS": "8"}
QUERY = {"text_field": "review", "label_field": "gold", "max_evals": "40"}


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


ROWS = [{"review": text, "gold": label} for text, label in REVIEWS * 6]  # 30 lines
ROWS[4] = {"review": "   ", "gold": "negative"}  # refused: blank; counted, skipped


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server(BUCKET) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def single(tiny_model_dir: Path, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("analyses-single")
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "TORCH_THREADS": "1",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",  # so that /ping's 200 means the process that answers is ready
        **LIMITS,
        "S3_ALLOWED_PREFIXES": f"s3://{BUCKET}/in/,s3://{BUCKET}/out/",
        **aws_env(s3_endpoint),
    }
    with running_service(tmp, env) as service:
        wait_healthy(service)
        yield service


def post(service: Service, data: bytes, content_type: str, **query: str) -> requests.Response:
    return requests.post(
        f"{service.url}/analyses",
        data=data,
        headers={"Content-Type": content_type},
        params=query,
        timeout=300,
    )


def cli_analysis(model_dir: Path, tmp: Path, rows: list[dict]) -> dict:
    """The same input through `clarion analyze`, for comparison: one use case, one answer."""
    source = tmp / "input.jsonl"
    source.write_bytes(jsonl(rows))
    args = [
        "analyze",
        str(source),
        "--out",
        str(tmp / "cli"),
        "--text-field",
        "review",
        "--label-field",
        "gold",
    ]
    subprocess.run(
        [sys.executable, "-m", "shared.cli", *args, "--max-evals", "40"],
        cwd=REPO,
        env=base_env(MODEL_DIR=str(model_dir), TORCH_THREADS="1"),
        check=True,
        capture_output=True,
    )
    return json.loads((tmp / "cli" / "analysis.json").read_text())


def test_single_process_runs_the_analysis_within_the_request(
    single: Service, tiny_model_dir: Path, tmp_path: Path
) -> None:
    response = post(single, jsonl(ROWS), "application/jsonlines", **QUERY)
    assert response.status_code == 200, response.text
    analysis = response.json()
    assert analysis["status"] == "succeeded" and response.headers["Location"] == f"/analyses/{analysis['id']}"
    assert (
        analysis["lines"] == 30
        and analysis["texts"] == 29
        and analysis["progress"] == {"done": 29, "total": 29}
    )
    document = analysis["analysis"]
    assert document["clarion"]["texts"] == 29 and document["clarion"]["skipped"] == 1
    assert document["clarion"]["input"] == "request body"
    assert set(document["explanations"]["kernel_shap"]) == {"negative", "neutral", "positive"}
    # the same answer as `clarion analyze` on the same lines (the input's name aside)
    expected = cli_analysis(tiny_model_dir, tmp_path, ROWS)
    expected["clarion"]["input"] = "request body"
    assert_same_analysis(document, expected)

    got = requests.get(f"{single.url}/analyses/{analysis['id']}", timeout=30)
    assert got.status_code == 200 and got.json() == analysis
    page = requests.get(
        f"{single.url}/analyses/{analysis['id']}", headers={"Accept": "text/html"}, timeout=30
    )
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "nonce-" in page.headers["Content-Security-Policy"] and "What drives each label" in page.text
    assert requests.delete(f"{single.url}/analyses/{analysis['id']}", timeout=30).status_code == 204
    assert requests.get(f"{single.url}/analyses/{analysis['id']}", timeout=30).status_code == 404


def test_a_csv_body_with_its_options(single: Service) -> None:
    table = io.StringIO()
    table.write("id;review;gold\n")
    for i, row in enumerate(ROWS[:10]):
        table.write(f'{i};"{row["review"]}";{row["gold"]}\n')
    response = post(
        single, table.getvalue().encode(), "text/csv", **QUERY, delimiter=";", agg_method="median", top_k="3"
    )
    assert response.status_code == 200, response.text
    document = response.json()["analysis"]
    assert document["clarion"]["options"] == {
        "agg_method": "median", "top_k": 3, "normalize": "case,punctuation", "text_field": "review"
    }  # fmt: skip
    assert all(
        len(v["global_top_shap_text"]["review"]) <= 3
        for v in document["explanations"]["kernel_shap"].values()
    )


@pytest.mark.parametrize(
    ("data", "content_type", "query", "status", "words"),
    [
        (jsonl(ROWS), "application/jsonlines", {"colour": "red"}, 400, "unknown query parameter"),
        (jsonl(ROWS), "application/jsonlines", {"agg_method": "max"}, 400, "agg_method"),
        (jsonl(ROWS), "application/jsonlines", {"max_evals": "many"}, 400, "max_evals"),
        (jsonl(ROWS), "application/jsonlines", {"granularity": "letter"}, 400, "granularity"),
        (jsonl(ROWS), "application/jsonlines", {"labels": "happy"}, 400, "label"),
        (jsonl(ROWS), "application/jsonlines", {"normalize": "stemming"}, 400, "normalize"),
        (jsonl(ROWS), "text/plain", {}, 415, "JSON Lines"),
        (b"", "application/jsonlines", {}, 400, "no text"),
        (jsonl([{"other": "x"}] * 3), "application/jsonlines", {}, 400, "no text"),
        (b"review\n", "text/csv", {"text_field": "text"}, 400, "no column"),
        (jsonl(ROWS * 5), "application/jsonlines", {}, 413, "ANALYSIS_MAX_TEXTS"),
        (b"x" * 30000, "application/jsonlines", {}, 413, "ANALYSIS_MAX_BYTES"),
        (b'{"input": 3}', "application/json", {}, 400, "s3://"),
        (b'{"input": "s3://datasets/in/missing.jsonl"}', "application/json", {}, 404, "no such object"),
        (b'{"input": "s3://datasets/other/x.jsonl"}', "application/json", {}, 403, "S3_ALLOWED_PREFIXES"),
        (b'{"input": "s3://datasets/in/x.parquet"}', "application/json", {}, 400, ".jsonl"),
        (b'{"input": "http://example.com/x.jsonl"}', "application/json", {}, 400, "s3://"),
    ],
)
def test_bad_analyses_are_clear_4xx(
    single: Service, data: bytes, content_type: str, query: dict, status: int, words: str
):
    response = post(single, data, content_type, **{"text_field": "review", **query})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_from_and_to_s3(single: Service, s3_endpoint: str) -> None:
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=BUCKET, Key="in/reviews.jsonl", Body=jsonl(ROWS[:12]))
    spec = {"input": f"s3://{BUCKET}/in/reviews.jsonl", "output": f"s3://{BUCKET}/out/run1/"}
    response = requests.post(f"{single.url}/analyses", json=spec, params=QUERY, timeout=300)
    assert response.status_code == 200, response.text
    analysis = response.json()
    assert analysis["input"] == spec["input"] and analysis["output"] == spec["output"]
    written = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="out/run1/")["Contents"]}
    assert written == {"out/run1/analysis.json", "out/run1/records.jsonl", "out/run1/report.html"}
    stored = json.loads(client.get_object(Bucket=BUCKET, Key="out/run1/analysis.json")["Body"].read())
    assert stored == analysis["analysis"] and stored["clarion"]["input"] == spec["input"]
    records = client.get_object(Bucket=BUCKET, Key="out/run1/records.jsonl")["Body"].read().splitlines()
    assert [json.loads(r)["line"] for r in records] == list(range(1, 13))
    big = b"x" * 30000
    client.put_object(Bucket=BUCKET, Key="in/big.jsonl", Body=big)
    too_big = requests.post(
        f"{single.url}/analyses", json={"input": f"s3://{BUCKET}/in/big.jsonl"}, timeout=30
    )
    assert too_big.status_code == 413 and "ANALYSIS_MAX_BYTES" in too_big.json()["error"]["message"]


# ---- on workers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brokered(tiny_model_dir: Path, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """Redis, the API and a first worker (a second joins in the test), chunks of 8 texts."""
    tmp = tmp_path_factory.mktemp("analyses-workers")
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "TORCH_THREADS": "1",
        "WORKER_CONCURRENCY": "1",
        "JOB_SOFT_TIME_LIMIT": "30",
        "JOB_TIME_LIMIT": "35",
        "JOB_VISIBILITY_TIMEOUT": "36",
        "JOB_LEASE": "3",  # a killed worker's chunk runs again within seconds
        "JOB_PUBLISH_GRACE": "2",
        "EXPLANATION_CACHE_SIZE": "0",
        **LIMITS,
        "ANALYSIS_MAX_TEXTS": "400",
        "ANALYSIS_MAX_BYTES": "200000",
        "MAX_EVALS_LIMIT": "20000",
        "S3_ALLOWED_PREFIXES": f"s3://{BUCKET}/",
        **aws_env(s3_endpoint),
    }
    with job_stack(tmp, env) as stack:
        yield stack


def test_chunks_run_on_every_worker_and_a_killed_one_loses_nothing(brokered, tiny_model_dir: Path) -> None:
    api: Service = brokered.api
    second = Worker(brokered.tmp, brokered.env)
    second.wait_ready()
    first = brokered.worker
    try:
        # 200 texts in 25 chunks, each a few seconds of work on the tiny model (max_evals 400, windows
        # off): long enough that the first worker is killed while it holds a chunk.
        rows = [{"review": text, "gold": label} for text, label in REVIEWS * 40]
        response = post(api, jsonl(rows), "application/jsonlines", **{**QUERY, "max_evals": "400"})
        assert response.status_code == 202, response.text
        analysis = response.json()
        assert analysis["status"] == "queued" and analysis["progress"] == {"done": 0, "total": 200}
        location = f"{api.url}{response.headers['Location']}"

        def held() -> int:
            log = first.log()
            return log.count("] received") - log.count("] succeeded in")

        def progressed_and_held() -> bool:
            # Wait for the first worker to hold a chunk, not merely for progress: progress alone may
            # come while the first worker sits between two chunks, and then the kill loses nothing.
            body = requests.get(location, timeout=30).json()
            return body["progress"]["done"] > 0 and body["status"] == "running" and held() >= 1

        wait_until(progressed_and_held, 120, 0.05, "the first worker to hold a chunk after the first chunks")
        first.kill()  # SIGKILL mid-chunk: that chunk is redelivered to a worker still alive
        replacement = Worker(brokered.tmp, brokered.env)
        brokered.worker = replacement
        replacement.wait_ready()

        def finished() -> dict | None:
            body = requests.get(location, timeout=30).json()
            return body if body["status"] in ("succeeded", "failed", "cancelled") else None

        wait_until(finished, 300, 0.5, "the analysis to finish")
        done = requests.get(location, timeout=30).json()
        assert done["status"] == "succeeded", done
        assert done["progress"] == {"done": 200, "total": 200}
        for worker in (first, second):
            assert "clarion.analyze_chunk[" in worker.log()  # both workers took chunks
        document = done["analysis"]
        assert document["clarion"]["texts"] == 200 and document["clarion"]["texts_with_true_label"] == 200
        page = requests.get(location, headers={"Accept": "text/html"}, timeout=30)
        assert page.status_code == 200 and "Worst errors" in page.text
        assert requests.delete(location, timeout=30).status_code == 204
        assert requests.get(location, timeout=30).status_code == 404
    finally:
        second.stop()


def test_a_running_analysis_is_cancelled(brokered) -> None:
    api: Service = brokered.api
    # Windowed documents at a high max_evals: each chunk is minutes of work, so the DELETE lands mid-chunk.
    rows = [{"review": LONG_REVIEW * 6}] * 16
    options = {"text_field": "review", "max_evals": "10000", "granularity": "word", "long_text": "windows"}
    response = post(api, jsonl(rows), "application/jsonlines", **options)
    assert response.status_code == 202, response.text
    location = f"{api.url}{response.headers['Location']}"
    wait_until(lambda: requests.get(location, timeout=30).json()["status"] == "running", 120, 0.1, "running")
    cancelled = requests.delete(location, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    analysis_id = cancelled.json()["id"]
    wait_until(
        lambda: f"analysis {analysis_id} cancelled while chunk" in brokered.worker.log(), 60, 0.2, "the stop"
    )
    assert requests.get(location, timeout=30).json()["status"] == "cancelled"
    # the worker goes on with the next analysis
    quick = post(api, jsonl(ROWS[:6]), "application/jsonlines", text_field="review", max_evals="20")
    next_location = f"{api.url}{quick.headers['Location']}"
    wait_until(
        lambda: requests.get(next_location, timeout=30).json()["status"] == "succeeded", 120, 0.2, "next"
    )


def test_an_analysis_whose_publisher_died_is_published_by_the_sweeper(brokered) -> None:
    """The state an API leaves when it dies after recording an analysis and before publishing its
    chunk tasks: the staged record (queued, noted unpublished) and no task. Another API process's
    sweeper publishes the chunks, and the analysis comes out as if nothing had happened."""
    from dataclasses import replace

    from shared.io.records import json_lines
    from shared.jobs.analysis import analysis_store_for, stage
    from shared.jobs.job import new_job_id
    from shared.settings import Settings

    api: Service = brokered.api
    response = post(api, jsonl(ROWS), "application/jsonlines", **QUERY)
    location = f"{api.url}{response.headers['Location']}"
    wait_until(lambda: requests.get(location, timeout=30).json()["status"] == "succeeded", 120, 0.2, "it")
    reference = requests.get(location, timeout=30).json()

    settings = Settings.from_env({"REDIS_URL": brokered.redis.url, **LIMITS})
    store = analysis_store_for(settings)
    published = store.load(reference["id"])
    assert published is not None
    assert store.get(published.id, "input:0") is None  # merged: Redis keeps the document alone
    stranded = replace(
        published, id=new_job_id(), status="queued", started_at=None, finished_at=None, error=None,
        chunks=0, texts=0, lines=0, revision=0, idempotency_key=None,
    )  # fmt: skip
    lines = json_lines(jsonl(ROWS).decode().splitlines(), ("review",), "gold")
    stage(store, stranded, lines, settings)  # staged and stored, noted unpublished; then the API died
    stranded_location = f"{api.url}/analyses/{stranded.id}"
    assert requests.get(stranded_location, timeout=30).json()["status"] == "queued"

    wait_until(
        lambda: requests.get(stranded_location, timeout=30).json()["status"] in ("succeeded", "failed"),
        120, 0.2, "the stranded analysis",
    )  # fmt: skip
    finished = requests.get(stranded_location, timeout=30).json()
    assert finished["status"] == "succeeded", finished
    assert finished["progress"] == reference["progress"]
    assert_same_analysis(finished["analysis"], reference["analysis"])
    assert f"analysis {stranded.id}: stored, never published" in api.log()


@pytest.mark.parametrize("mode", ["single", "brokered"])
def test_a_retried_analysis_with_the_same_key_gives_one_analysis(
    mode: str, request: pytest.FixtureRequest
) -> None:
    """The answer to a POST /analyses was lost and the client sends it again, same Idempotency-Key:
    the first analysis answers (its input is not staged again); another body with the key is a 422."""
    service = request.getfixturevalue(mode)
    service = service if isinstance(service, Service) else service.api
    rows = ROWS[:6]
    headers = {"Content-Type": "application/jsonlines", "Idempotency-Key": f"analysis-{mode}-1"}

    def submit(data: bytes) -> requests.Response:
        return requests.post(f"{service.url}/analyses", data=data, headers=headers, params=QUERY, timeout=300)

    first, second = submit(jsonl(rows)), submit(jsonl(rows))
    assert first.status_code == second.status_code == (200 if mode == "single" else 202), first.text
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    other = submit(jsonl(ROWS[:5]))
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused", other.text
    location = f"{service.url}{first.headers['Location']}"
    wait_until(lambda: requests.get(location, timeout=30).json()["status"] == "succeeded", 120, 0.2, "it")
    assert requests.get(location, timeout=30).json()["lines"] == len(rows)
