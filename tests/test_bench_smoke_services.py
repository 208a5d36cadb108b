"""The benchmarks that start services, workers and Redis, run end to end in --smoke mode (beside
test_bench_smoke.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bench_runs import needs_minilm, run_bench

pytestmark = needs_minilm


@pytest.fixture(scope="module", autouse=True)
def shared_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One MODEL_CACHE_DIR for every service and worker these smoke runs start (bench passes it on
    in --smoke runs): the first exports the model to ONNX and the rest reuse the export instead of
    spending this machine's CPU on it each, beside the benchmark they run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODEL_CACHE_DIR", str(tmp_path_factory.mktemp("model-cache")))
        yield


def test_classify_smoke(tmp_path: Path) -> None:
    results = run_bench("classify", tmp_path)
    assert results["in_process_sentences_per_s"] > 0
    assert results["repeated_explanation_ms"] > 0
    assert {(r["mode"], r["concurrency"]) for r in results["runs"]} == {
        (mode, c) for mode in ("batching", "no-batching") for c in (1, 4)
    }
    for run in results["runs"]:
        assert run["errors"] == 0 and run["requests"] == 20
        assert run["requests_per_s"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
    assert results["ratios"]["throughput_batching_over_no_batching"] > 0
    assert results["ratios"]["p50_batching_over_no_batching"] > 0


def test_jobs_smoke(tmp_path: Path) -> None:
    results = run_bench("jobs", tmp_path)
    assert [(r["pool"], r["workers"]) for r in results["runs"]] == [("threads", 2)]
    for run in results["runs"]:
        assert 0 < run["latency_s_median"] < 60
        assert run["jobs_per_minute"] > 0


def test_load_smoke(tmp_path: Path) -> None:
    results = run_bench("load", tmp_path)
    assert [r["clients"] for r in results["load"]] == [0, 2]
    for run in results["load"]:
        assert run["classify"]["requests"] > 0 and not run["classify"]["errors"]
        assert run["ping"]["requests"] > 0
    deadline = results["deadline"]
    assert deadline["status"] == 503 and deadline["next_status"] == 200
    assert deadline["answered_after_s"] >= deadline["timeout_s"] - 0.5
    concurrency = results["concurrency"]
    # each of the smoke's 4 short texts sent concurrently, then one by one: every answer a 200
    assert concurrency["texts"] == 4
    assert concurrency["statuses"] == {"200": 8} or concurrency["statuses"] == {200: 8}
    assert concurrency["concurrent_over_sequential"] > 0


def test_soak_smoke(tmp_path: Path) -> None:
    """A few seconds of mixed traffic on each target: no 5xx, every job finished, bad input 4xx."""
    results = run_bench("soak", tmp_path)
    assert [r["target"] for r in results["runs"]] == ["single", "broker"]
    for run in results["runs"]:
        assert run["server_errors"] == 0, run["statuses"]
        assert run["jobs"]["unfinished"] == 0 and run["jobs"]["failed"] == 0, run["jobs"]
        assert run["jobs"]["accepted"] > 0 and run["jobs"]["succeeded"] == run["jobs"]["accepted"]
        assert set(run["statuses"]["bad input"]) <= {"400", "415"}
        assert run["rss"] and all(sample["rss_mib"] for sample in run["rss"])


def test_readable_smoke(tmp_path: Path) -> None:
    results = run_bench("readable", tmp_path)
    by = results["granularity"]
    assert set(by) == {"token", "word", "sentence"}
    assert by["sentence"]["median_exact_evals"] <= by["word"]["median_exact_evals"]
    assert by["word"]["median_exact_evals"] <= by["token"]["median_exact_evals"]
    document = results["document"]
    assert document["job_status"] == "succeeded", document
    assert document["additivity_error"] < 1e-5
    parameters = document["parameters"]
    assert parameters["long_text"] == "windows" and parameters["windows"] >= 2
    assert parameters["windows_memoised"] > 0
    assert document["in_process"]["rows_with_memo"] < document["in_process"]["rows_without_memo"]


def test_analyses_smoke(tmp_path: Path) -> None:
    results = run_bench("analyses", tmp_path)
    (run,) = results["runs"]
    assert run["workers"] == 1 and run["analysed"] == run["texts"] == 12
    assert run["texts_per_second"] > 0 and all(v > 50 for v in run["peak_rss_mib"].values())
