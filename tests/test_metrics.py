"""GET /metrics scraped from real servers: the counters move with the traffic, every gunicorn worker
is counted (multiprocess mode), and a Celery worker serves its own metrics."""

from __future__ import annotations

from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support import answering_processes, free_port, job_stack, running_service, wait_healthy, wait_until


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample, keyed by (name, sorted labels)."""
    response = requests.get(url, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def test_the_counters_move_with_the_traffic(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true"}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        before = scrape(service.url + "/metrics")
        request = {"data": "i loved this film .", "explain": True, "max_evals": 60}
        for _ in range(2):  # the second is a cache hit
            assert service.post("/invocations", json=request).status_code == 200
        assert service.post("/invocations", json={"data": ""}).status_code == 400
        after = scrape(service.url + "/metrics")

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("clarion_requests_total", route="/invocations", method="POST", status="200") == 2
    assert moved("clarion_requests_total", route="/invocations", status="400") == 1
    assert moved("clarion_request_seconds_count", route="/invocations") == 3
    assert moved("clarion_classify_seconds_count") >= 2 and moved("clarion_explain_seconds_count") == 2
    assert moved("clarion_evaluations_total") > 2
    assert moved("clarion_forward_passes_total", priority="explain") > 0
    assert moved("clarion_forward_passes_total", priority="classify") >= 1
    assert moved("clarion_rows_total") > 0 and moved("clarion_tokens_total") > 0
    assert any(name == "clarion_padding_tokens_total" for name, _ in after)  # exported, whatever its value
    assert moved("clarion_queue_wait_seconds_count", priority="explain") > 0
    assert moved("clarion_cache_requests_total", cache="explanations", result="hit") == 1
    assert moved("clarion_cache_requests_total", cache="explanations", result="miss") == 1
    assert total(after, "clarion_dropped_items_total") == 0
    assert total(after, "clarion_model_load_seconds") > 0
    assert total(after, "clarion_build_info", model=tiny_model_dir.name) == 1
    assert total(after, "clarion_jobs_pending") == 0


def test_every_gunicorn_worker_is_counted(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
        "TORCH_THREADS": "1",
        "ACCESS_LOG": "true",  # each line names the process that answered
    }
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        wait_until(lambda: service.log().count("loaded from") >= 2, 120, what="both workers' models")
        sent = 0

        def both_answered() -> bool:
            """New connections: the kernel spreads them over both processes (fewer to a busy one,
            e.g. one still building its ONNX graphs), so send until both have answered."""
            nonlocal sent
            for _ in range(10):
                response = requests.post(
                    service.url + "/invocations", json={"data": "good film ."}, timeout=30
                )
                assert response.status_code == 200
                sent += 1
            return len(answering_processes(service.log(), "POST", "/invocations")) == 2

        wait_until(both_answered, 120, 0, "both HTTP processes to answer")
        # both processes answered, so each count below is a sum over them
        for _ in range(6):  # whichever process answers the scrape counts them all
            samples = scrape(service.url + "/metrics")
            assert total(samples, "clarion_requests_total", route="/invocations", status="200") == sent
        assert total(samples, "clarion_build_info", model=tiny_model_dir.name) == 1  # max over processes


def test_a_celery_worker_serves_its_own_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {"MODEL_DIR": str(tiny_model_dir), "WORKER_CONCURRENCY": "1"}
    with job_stack(tmp_path, env, worker_env={"METRICS_PORT": str(port)}) as stack:
        api = stack.api
        assert total(scrape(api.url + "/metrics"), "clarion_jobs_pending") == 0  # read from the broker
        job = api.post("/explanations", json={"data": "i loved this film .", "max_evals": 40}).json()
        done = lambda: api.get(f"/explanations/{job['id']}").json()["status"] == "succeeded"  # noqa: E731
        wait_until(done, 120, what="the job")
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert total(samples, "clarion_job_seconds_count") == 1
        assert total(samples, "clarion_evaluations_total") > 2
        assert total(samples, "clarion_forward_passes_total", priority="explain") > 0
        assert total(samples, "clarion_build_info", model=tiny_model_dir.name) == 1


def test_the_command_line_imports_no_metrics_before_choosing_their_folder() -> None:
    """prometheus_client chooses in-process or multiprocess values when it is imported: building the
    command line (every subcommand's module) must not import it before `serve` and `worker` set
    PROMETHEUS_MULTIPROC_DIR, or each HTTP process counts its requests where no scrape reads them."""
    import subprocess
    import sys

    from tests.support import REPO

    code = (
        "import sys\nfrom shared.cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
        "    pass\nprint('prometheus_client' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout[-500:] + done.stderr[-2000:]
