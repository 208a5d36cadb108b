"""Schemathesis against the live service's /openapi.json: generated valid and invalid requests for
every operation, on the single-process service and on the service with a broker. No 5xx, every
response matches its documented schema, every 4xx is a JSON error."""

from __future__ import annotations

import json
from pathlib import Path

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.support import job_stack, running_service, wait_healthy

CASES_PER_OPERATION_AND_MODE = 130  # x (4 operations x 2 modes + /ping): ~1,000 cases per service
# Small limits keep every generated request cheap on a 2-core machine; they are documented limits,
# so requests past them are part of what is fuzzed.
LIMITS = {
    "MAX_EVALS_LIMIT": "40",
    "MAX_TEXTS_PER_REQUEST": "3",
    "MAX_TEXT_CHARS": "300",
    "EXPLAIN_BATCH_SIZE_LIMIT": "8",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "20",
    "EXPLANATION_CACHE_SIZE": "0",
}


def fuzz(url: str) -> dict[str, int]:
    """Run the generated cases; return the count per operation and mode (raises on a failure)."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    counts: dict[str, int] = {}
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} {mode.value}"
            counts[label] = 0
            _run_cases(operation, mode, url, session, counts, label)
    return counts


def _run_cases(
    operation, mode, url: str, session: requests.Session, counts: dict[str, int], label: str
) -> None:
    """Hypothesis drives one operation in one mode, from a fixed seed."""

    @seed(20261125)
    @settings(
        max_examples=CASES_PER_OPERATION_AND_MODE,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=url, session=session, timeout=60)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        if 400 <= response.status_code < 500:
            headers = {name.lower(): value for name, value in response.headers.items()}
            content_type = headers.get("content-type")
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            assert str(content_type).startswith("application/json"), (response.status_code, response.text)
            error = json.loads(response.text)["error"]
            assert error["code"] and error["message"], response.text
        counts[label] += 1

    try:
        run()
    except Unsatisfiable:  # no invalid request exists for an operation without parameters or body
        assert mode == GenerationMode.NEGATIVE and counts[label] == 0


def report(counts: dict[str, int], service_log: str) -> int:
    total = sum(counts.values())
    print(f"\nschemathesis: {total} cases over {len(counts) // 2} operations x 2 modes: {counts}")
    assert "Traceback" not in service_log
    return total


def test_fuzz_the_single_process_service(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true", **LIMITS}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        total = report(fuzz(service.url), service.log())
        assert service.get("/ping").status_code == 200
    assert total >= 1000


def test_fuzz_the_service_with_a_broker(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "WORKER_CONCURRENCY": "1", **LIMITS}
    with job_stack(tmp_path, env) as stack:
        total = report(fuzz(stack.api.url), stack.api.log() + stack.worker.log())
        assert stack.api.get("/ping").status_code == 200
    assert total >= 1000
