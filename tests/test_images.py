"""The built SageMaker image, run exactly as SageMaker runs it: `docker run IMAGE serve`, the model
folder read-only at /opt/ml/model, port 8080 on loopback, no other environment (podman here).

Skipped unless podman is usable and `scripts/images.sh build` has built the image (`.ci/run` does).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import free_port, image_exists, image_name, podman

SAGEMAKER = image_name("sagemaker")


pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(not image_exists(SAGEMAKER), reason=f"no {SAGEMAKER}: scripts/images.sh build"),
]


class Container:
    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        self.cold_start_s: float | None = None

    def post(self, body: bytes | str, content_type: str = "application/json", timeout: float = 120):
        data = body.encode() if isinstance(body, str) else body
        headers = {"Content-Type": content_type}
        return requests.post(self.url + "/invocations", data=data, headers=headers, timeout=timeout)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return (done.stdout + done.stderr)[-3000:]


def start(sst2_dir: Path, name: str) -> Container:
    port = free_port()
    started = time.monotonic()
    podman(
        "run", "-d", "--name", name,
        "-p", f"127.0.0.1:{port}:8080",
        "-v", f"{sst2_dir}:/opt/ml/model:ro",
        # Nothing here asks for "fast": no process measures its candidates on the suite's cores
        # (the manifests' test runs the images as deployed, measuring).
        "-e", "FAST_BACKEND=exact",
        SAGEMAKER, "serve",
    )  # fmt: skip
    container = Container(name, port)
    deadline = started + 180
    while time.monotonic() < deadline:
        try:
            ping = requests.get(container.url + "/ping", timeout=2)
            if ping.status_code == 200:
                container.cold_start_s = time.monotonic() - started
                return container
            assert ping.json().get("status") != "failed", f"model failed to load:\n{container.logs()}"
        except (requests.RequestException, ValueError):
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        assert state in {"running", "created", "configured"}, f"container {state}:\n{container.logs()}"
        time.sleep(0.5)
    raise AssertionError(f"/ping never answered 200:\n{container.logs()}")


@pytest.fixture(scope="module")
def container(sst2_dir: Path) -> Iterator[Container]:
    name = f"clarion-test-{os.getpid()}"
    podman("rm", "-f", name, check=False)
    try:
        running = start(sst2_dir, name)
        print(f"SageMaker image: /ping 200 after {running.cold_start_s:.1f} s")
        yield running
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_ping_and_the_seed_request(container: Container) -> None:
    ping = requests.get(container.url + "/ping", timeout=5)
    assert ping.status_code == 200 and ping.json()["status"] == "healthy"
    response = container.post('{"data":"This is a sentence","explain":true}')
    assert response.status_code == 200, response.text
    body = response.json()
    assert {p["label"] for p in body["prediction"]} == {"NEGATIVE", "POSITIVE"}
    tokens = [token for token, _ in body["explanation"]]
    assert "sentence" in tokens


def test_an_explained_request_is_additive(container: Container) -> None:
    response = container.post(json.dumps({"data": ["I loved this film.", "Dull."], "explain": True}))
    assert response.status_code == 200, response.text
    results = response.json()
    assert len(results) == 2
    for result in results:
        for label, output in result["model_output"].items():
            total = result["base_values"][label] + sum(values[label] for _, values in result["explanation"])
            assert abs(total - output) < 1e-4


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ('{"data": "\\ud800", "explain": true}', "application/json", 400),
        ('{"data": 1' + "0" * 5000 + "}", "application/json", 400),
        ('{"data": ""}', "application/json", 400),
        ("plain", "application/x-unknown", 415),
    ],
)
def test_bad_input_gets_a_json_4xx(container: Container, body: str, content_type: str, status: int) -> None:
    response = container.post(body, content_type)
    assert response.status_code == status, response.text
    assert "error" in response.json()


def test_the_healthcheck_passes_and_the_user_is_not_root(container: Container) -> None:
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0, container.logs()
    assert podman("exec", container.name, "id", "-u").stdout.strip() == "10001"
    user = podman("inspect", "--format", "{{.Config.User}}", SAGEMAKER).stdout.strip()
    assert user.split(":")[0] == "10001"


def test_serving_never_needs_shap_and_every_module_imports() -> None:
    script = (
        "import importlib, pkgutil, api, worker, shared, clarion_client\n"
        "packages = (api, worker, shared, clarion_client)\n"
        "names = [m.name for p in packages for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
        "[importlib.import_module(n) for n in names]\n"
        "import importlib.util as u; print(len(names), u.find_spec('shap') is None)\n"
    )
    done = podman("run", "--rm", "--entrypoint", "python", SAGEMAKER, "-c", script, timeout=180)
    count, no_shap = done.stdout.split()
    assert int(count) >= 20
    assert no_shap == "True", "shap is installed in the serving image"


def test_sigterm_finishes_the_request_in_flight_and_stops_in_time(sst2_dir: Path) -> None:
    name = f"clarion-test-stop-{os.getpid()}"
    podman("rm", "-f", name, check=False)
    try:
        stopping = start(sst2_dir, name)
        # A few seconds of work, well inside the grace period even on a busy 2-core machine.
        text = " ".join(["The story was slow but the acting was wonderful and moving."] * 3)
        answer: dict[str, requests.Response] = {}

        def explain() -> None:
            body = json.dumps({"data": text, "explain": True, "max_evals": 300})
            answer["response"] = stopping.post(body, timeout=60)

        request = threading.Thread(target=explain)
        request.start()
        time.sleep(1.0)  # the explanation is running
        began = time.monotonic()
        podman("stop", "-t", "30", name, timeout=60)  # SageMaker's grace: SIGTERM, then 30 s
        stopped_in = time.monotonic() - began
        request.join(timeout=60)
        assert answer["response"].status_code == 200, answer["response"].text
        assert stopped_in < 30
        code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", stopping.logs()
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
