"""Schemathesis against the live service's /openapi.json, on the single-process service and on the
service with a broker (Redis and a real Celery worker).

- Generated requests for every operation, valid and invalid by the document (fixed seed), judged by
  every check schemathesis has (`--checks all`; two in Clarion's forms, below): no 5xx,
  every response matches its documented schema, every 4xx is a JSON error, every request the
  document calls valid is accepted (2xx; for a job, 404 when the id names none) and every request it
  calls invalid is refused (400, 404 for a malformed job id, 415).
- A stateful run that follows the document's links from POST /explanations to the job's GET and
  DELETE: a job just submitted is there, a DELETE cancels a queued or running job (200) and removes a
  finished one (204), and a removed job is a 404.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as CHECKS_REGISTRY
from schemathesis.checks import (
    ensure_resource_availability,
    negative_data_rejection,
    object_level_authorization,
    use_after_free,
)
from schemathesis.config import SchemathesisConfig
from schemathesis.core.transport import expand_status_codes

from api.kserve import speaks_kserve
from tests.support import aws_env, job_stack, running_service, s3_server, wait_healthy

SEED = 20261125
CASES_PER_OPERATION_AND_MODE = 80  # an operation without parameters has 1
# KServe's paths decode into the same options and texts as /invocations, which the cases above cover:
# fewer cases each keep the suite's time.
KSERVE_CASES_PER_OPERATION_AND_MODE = 40
# V2's paths under /versions/{model_version} are the unversioned paths' views: a few cases each check
# the version, and keep the run's time as it was before every check ran.
VERSIONED_CASES_PER_OPERATION_AND_MODE = 8
STATEFUL_SCENARIOS = 25  # each up to STATEFUL_STEPS calls along the links
STATEFUL_STEPS = 6
# Small limits keep every generated request cheap on a 2-core machine. The document states the limits
# of the settings the service runs with, so requests past them are generated as invalid ones.
LIMITS = {
    "MAX_EVALS_LIMIT": "40",
    "MAX_TEXTS_PER_REQUEST": "3",
    "MAX_TEXT_CHARS": "300",
    "MAX_WINDOWED_TEXT_CHARS": "600",
    "EXPLAIN_BATCH_SIZE_LIMIT": "8",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "20",
    "EXPLANATION_CACHE_SIZE": "0",
    "ANALYSIS_MAX_TEXTS": "6",
    "ANALYSIS_MAX_BYTES": "3000",
}
# What "accepted" and "refused" mean here. Accepted: a 2xx, nothing else (no 503: the model is loaded
# and the limits keep every request far inside the deadline); a well-formed job id that names no job is
# a 404. Refused: a 400 for a body the document refuses, a 404 for a job id outside its pattern, a
# 415 for a content type it does not list.
CONFIG = {
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx"]},
        "negative_data_rejection": {"expected-statuses": ["400", "404", "415"]},
    },
    "operations": [
        {
            "include-path": "/explanations/{job_id}",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404"]}},
        },
        {
            "include-path": "/analyses/{analysis_id}",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404"]}},
        },
        # The document cannot say which Idempotency-Keys earlier cases used with another body (a 422).
        {
            "include-path": "/explanations",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "422"]}},
        },
        # A dataset is a file: the document can say its size and its options, not which strings hold a
        # line with a text to explain (a 400), nor which S3 locations this deployment allows (a 403).
        {
            "include-path": "/analyses",
            "checks": {
                "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "403", "413", "422"]}
            },
        },
    ],
    # The stateful run follows the document's links and no inferred ones: links inferred from a GET's
    # or DELETE's answer would make the steps a scenario can draw depend on a job's timing (200 or
    # 204), which Hypothesis refuses as flaky. It starts from valid submissions (invalid ones are the
    # generated cases' business).
    "phases": {"stateful": {"generation": {"mode": "positive"}, "inference": {"algorithms": []}}},
}
# JSON Lines bodies go on the wire as the text they are, like text/plain ones.
schemathesis.serializer.alias("application/jsonlines", "text/plain")
_TEXT_BODIES = ("text/plain", "text/csv", "application/jsonlines")


def load_schema(url: str) -> Any:
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=SchemathesisConfig.from_dict(CONFIG))


def negative_data_rejection_as_sent(ctx: Any, response: Any, case: Any) -> bool | None:
    """negative_data_rejection, with a text body judged as it was sent. An "invalid" text body of
    another JSON type ({}, 55, null) goes on the wire as its JSON text: a string, which the document
    may call valid. schemathesis lets every invalid text/plain body through unchecked for that reason,
    and none of the others: here a text body that is invalid as sent (blank, too long) must be
    refused, and one that is valid as sent is no invalid request."""
    if case.media_type not in _TEXT_BODIES or case.meta is None or not case.meta.generation.mode.is_negative:
        return negative_data_rejection(ctx, response, case)
    if _body_valid_as_sent(response, case):
        return None
    expected = expand_status_codes(ctx.config.negative_data_rejection.expected_statuses)
    assert response.status_code in expected, (
        f"an invalid {case.media_type} body was answered {response.status_code}"
    )
    return None


def _body_valid_as_sent(response: Any, case: Any) -> bool:
    body = response.request.body
    text = body.decode("utf-8") if isinstance(body, bytes) else (body or "")
    schema = case.operation.get_body_for_media_type(case.media_type).raw_schema
    return Draft202012Validator(schema).is_valid(text)


def jobs_keep_their_lifecycle(ctx: Any, response: Any, case: Any) -> bool | None:
    """A job after a DELETE, in the stateful run: once a DELETE answered 204 (a finished job, removed)
    a GET or DELETE is a 404; once one answered 200 (cancelled), a GET shows it "cancelled" and a DELETE
    removes it (204). schemathesis' use_after_free takes every 2xx DELETE for a removal: not Clarion's
    cancel, which leaves the cancelled job readable."""
    if case.operation.path != "/explanations/{job_id}" or ctx.internals.recorder is None:
        return None
    job_id = case.path_parameters.get("job_id")
    deleted = None  # the status of the last successful DELETE of this job before this call
    for earlier in ctx.internals.find_all_cases():
        if earlier.id == case.id:
            break
        earlier_response = ctx.internals.find_response(case_id=earlier.id)
        if (
            earlier.operation.label == "DELETE /explanations/{job_id}"
            and (earlier.path_parameters or {}).get("job_id") == job_id
            and earlier_response is not None
            and earlier_response.status_code in (200, 204)
        ):
            deleted = earlier_response.status_code
    method = case.operation.method.upper()
    if deleted == 204:
        assert response.status_code == 404, f"{method} of a removed job: {response.status_code}"
    elif deleted == 200 and method == "GET":
        assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text
    elif deleted == 200:
        assert response.status_code == 204, f"DELETE of a cancelled job: {response.status_code}"
    if method == "DELETE" and response.status_code == 200:
        assert response.json()["status"] == "cancelled", response.text
    return None


# Every check schemathesis has (`--checks all`), two of them in the forms above: negative data judged
# as sent, and a job's lifecycle in place of use_after_free (which reads a cancel as a removal).
_REPLACED = {
    negative_data_rejection: negative_data_rejection_as_sent,
    use_after_free: jobs_keep_their_lifecycle,
}
ALL_CHECKS = [_REPLACED.get(check, check) for check in CHECKS_REGISTRY.get_all()]
# The stateless cases have no history: the checks that read one run in the stateful run.
_NEEDS_HISTORY = {jobs_keep_their_lifecycle, ensure_resource_availability, object_level_authorization}
CHECKS = [check for check in ALL_CHECKS if check not in _NEEDS_HISTORY]
STATEFUL_CHECKS = ALL_CHECKS


def fuzz(url: str) -> dict[str, int]:
    """Run the generated cases; return the count per operation and mode (raises on a failure)."""
    schema = load_schema(url)
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

    if "/versions/" in operation.path:
        examples = VERSIONED_CASES_PER_OPERATION_AND_MODE
    elif speaks_kserve(operation.path):
        examples = KSERVE_CASES_PER_OPERATION_AND_MODE
    else:
        examples = CASES_PER_OPERATION_AND_MODE

    @seed(SEED)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(base_url=url, session=session, timeout=60)
        case.validate_response(response, checks=CHECKS)
        assert_json_error(response)
        counts[label] += 1

    try:
        run()
    except Unsatisfiable:  # no invalid request exists for an operation without parameters or body
        assert mode == GenerationMode.NEGATIVE and counts[label] == 0


def assert_json_error(response: Any) -> None:
    """A 4xx is a JSON error: Clarion's `{"error": {"code", "message"}}`, or on the KServe paths
    their own `{"error": "<message>"}`."""
    if 400 <= response.status_code < 500:
        headers = {name.lower(): value for name, value in response.headers.items()}
        content_type = headers.get("content-type")
        content_type = content_type[0] if isinstance(content_type, list) else content_type
        assert str(content_type).startswith("application/json"), (response.status_code, response.text)
        error = json.loads(response.text)["error"]
        if speaks_kserve(urlsplit(response.request.url).path):
            assert isinstance(error, str) and error, response.text
        else:
            assert error["code"] and error["message"], response.text


def follow_links(url: str) -> Counter[str]:
    """The stateful run: scenarios of calls along the document's links, from a fixed seed; returns
    how many calls each operation answered with each status."""
    schema = load_schema(url)
    calls: Counter[str] = Counter()
    session = requests.Session()

    @seed(SEED)
    class Links(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": url, "session": session, "timeout": 60}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            calls[f"{case.operation.label} {response.status_code}"] += 1
            case.validate_response(
                response, checks=STATEFUL_CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
            )
            assert_json_error(response)

    Links.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    # The links were followed: jobs were submitted, then read and deleted through their ids.
    followed = {label.rsplit(" ", 1)[0] for label in calls}
    assert {"POST /explanations", "GET /explanations/{job_id}", "DELETE /explanations/{job_id}"} <= followed
    return calls


def report(counts: dict[str, int], calls: Counter[str], service_log: str) -> int:
    total = sum(counts.values())
    print(f"\nschemathesis: {total} cases over {len(counts) // 2} operations x 2 modes: {counts}")
    print(f"stateful: {sum(calls.values())} calls along the links: {dict(sorted(calls.items()))}")
    assert "Traceback" not in service_log
    return total


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A real S3-compatible server on loopback, with no buckets and no S3_ALLOWED_PREFIXES: a generated
    s3:// input is refused (a 403) before any call, and never reaches the internet."""
    with s3_server() as endpoint:
        yield aws_env(endpoint)


def test_fuzz_the_single_process_service(
    tiny_model_dir: Path, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    # This service measures fast's candidates in the background, as deployments do, while it is fuzzed.
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true", "FAST_BACKEND": "auto", **LIMITS, **s3_env}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        counts = fuzz(service.url)
        calls = follow_links(service.url)
        total = report(counts, calls, service.log())
        ping = service.get("/ping")
        assert ping.status_code == 200
        fast = ping.json()["fast"]  # chosen by measuring (or read from a measurement of this model)
        assert fast["status"] == "chosen" and "failed" not in fast["reason"], fast
    assert total >= 1000


def test_fuzz_the_service_with_a_broker(tiny_model_dir: Path, tmp_path: Path, s3_env: dict[str, str]) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "WORKER_CONCURRENCY": "1", **LIMITS, **s3_env}
    with job_stack(tmp_path, env) as stack:
        counts = fuzz(stack.api.url)
        calls = follow_links(stack.api.url)
        total = report(counts, calls, stack.api.log() + stack.worker.log())
        assert stack.api.get("/ping").status_code == 200
    assert total >= 1000
