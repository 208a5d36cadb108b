"""Optional API keys (outside SageMaker), over real HTTP; and Redis with a password."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.support import (
    Service,
    job_stack,
    run_cli,
    running_service,
    wait_healthy,
    wait_until,
)

KEY_ONE = "k1-0123456789abcdef"
KEY_TWO = "k2-fedcba9876543210"


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true", "API_KEYS": f"{KEY_ONE}, {KEY_TWO}"}
    with running_service(tmp_path_factory.mktemp("auth"), env) as svc:
        wait_healthy(svc)
        yield svc


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_ping_needs_no_key(service: Service) -> None:
    assert requests.get(service.url + "/ping", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-key-0123456789"),
        bearer(KEY_ONE + "x"),
        bearer(KEY_ONE[:-1]),
        {"Authorization": f"Basic {KEY_ONE}"},
        {"Authorization": KEY_ONE},
        {"Authorization": "Bearer"},
    ],
)
def test_every_other_route_needs_a_valid_key(service: Service, headers: dict[str, str]) -> None:
    for method, path in [
        ("POST", "/invocations"),
        ("POST", "/explanations"),
        ("GET", "/openapi.json"),
        ("GET", f"/explanations/{'0' * 32}"),
        ("DELETE", f"/explanations/{'0' * 32}"),
    ]:
        response = requests.request(
            method, service.url + path, json={"data": "x"}, headers=headers, timeout=30
        )
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_either_key_works(service: Service) -> None:
    for key in (KEY_ONE, KEY_TWO):
        response = service.post("/invocations", json={"data": "good film"}, headers=bearer(key))
        assert response.status_code == 200, response.text
    assert service.get("/openapi.json", headers=bearer(KEY_TWO)).status_code == 200


def test_a_job_is_readable_only_with_the_key_that_submitted_it(service: Service) -> None:
    job = service.post("/explanations", json={"data": "good film"}, headers=bearer(KEY_ONE)).json()
    assert service.get(f"/explanations/{job['id']}", headers=bearer(KEY_ONE)).json()["status"] == "succeeded"
    assert service.get(f"/explanations/{job['id']}", headers=bearer(KEY_TWO)).status_code == 404
    assert (
        requests.delete(
            f"{service.url}/explanations/{job['id']}", headers=bearer(KEY_TWO), timeout=10
        ).status_code
        == 404
    )
    assert service.get(f"/explanations/{job['id']}").status_code == 401


def test_short_keys_are_refused_at_start_up(tiny_model_dir: Path) -> None:
    done = run_cli("config", MODEL_DIR=str(tiny_model_dir), API_KEYS="short")
    assert done.returncode == 2 and "API_KEYS" in done.stderr
    shown = run_cli(
        "config", MODEL_DIR=str(tiny_model_dir), API_KEYS=KEY_ONE, REDIS_URL="redis://:s3cret@r:6379/0"
    )
    assert KEY_ONE not in shown.stdout and "s3cret" not in shown.stdout


@pytest.mark.parametrize("tls", [False, True], ids=["password", "password+tls"])
def test_jobs_through_a_redis_that_needs_a_password_and_tls(
    tiny_model_dir: Path, tmp_path: Path, tls: bool
) -> None:
    """REDIS_URL redis://:password@... or rediss://...?ssl_cert_reqs=required&ssl_ca_certs=CA serves
    the broker, the result backend, the job records and the cache alike."""
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "WORKER_CONCURRENCY": "1",
        "TORCH_THREADS": "1",
    }
    with job_stack(tmp_path, env, password="pw-0123456789", tls=tls) as stack:
        api = stack.api
        response = api.post("/explanations", json={"data": "good film", "max_evals": 40})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def finished() -> bool:
            return api.get(f"/explanations/{job_id}").json()["status"] in {"succeeded", "failed"}

        wait_until(finished, 60, what="the job")
        assert api.get(f"/explanations/{job_id}").json()["status"] == "succeeded"
