"""docker-compose.yml for real, with podman-compose and the images `scripts/images.sh build` made:
Redis, the API and two workers; ten jobs over HTTP; a worker killed mid-job and Redis restarted, and
every job answered 202 still succeeds; then everything is torn down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import REPO, free_port, image_exists, image_name, pings_healthy, podman, wait_until

PROJECT = f"clarion-test-{os.getpid()}"
# PyPI's podman-compose (dev requirements): Debian bookworm's 1.0.3 ignores --scale.
PODMAN_COMPOSE = str(Path(sys.executable).with_name("podman-compose"))
pytestmark = [
    pytest.mark.images,
    pytest.mark.skipif(
        shutil.which(PODMAN_COMPOSE) is None or not image_exists(image_name("worker")),
        reason="podman-compose or the images missing: scripts/images.sh build",
    ),
]


def compose(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [PODMAN_COMPOSE, "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def containers(service: str) -> list[str]:
    done = podman("ps", "--format", "{{.Names}}", "--filter", f"label=io.podman.compose.project={PROJECT}")
    return sorted(name for name in done.stdout.split() if f"_{service}_" in name)


@pytest.fixture(scope="module")
def api(sst2_dir: Path) -> Iterator[str]:
    port = free_port()
    env = dict(
        os.environ,
        MODEL_HOST_DIR=str(sst2_dir),
        API_PORT=str(port),
        # A killed worker's job goes back to the queue after the visibility timeout: short here
        # (each job is a few seconds of work, even on a busy machine).
        JOB_SOFT_TIME_LIMIT="15",
        JOB_TIME_LIMIT="18",
        JOB_VISIBILITY_TIMEOUT="20",
        # Nothing here asks for onnxruntime or "fast": no process exports a graph or measures fast's
        # candidates on the cores the jobs use (five processes each did both, on a 2-core machine).
        EXACT_BACKEND="torch",
        FAST_BACKEND="exact",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        up = compose(env, "up", "-d", "--scale", "worker=2")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]

        wait_until(lambda: pings_healthy(url), 300, what="the compose API's /ping")
        yield url
    finally:
        compose(env, "down", "-v", "-t", "0")  # the test is over: nothing to finish
        # podman-compose's `down` can leave a scaled or restarted container behind: remove whatever
        # still carries the project's label, then its volumes and network.
        label = f"label=io.podman.compose.project={PROJECT}"
        for kind in ("container", "volume", "network"):
            every = ["-a"] if kind == "container" else []
            listed = podman(kind, "ls", "-q", "--filter", label, *every, check=False).stdout.split()
            if listed:
                podman(kind, "rm", "-f", *listed, check=False)


def submit_when_loaded(api: str, body: dict, seconds: float = 120) -> requests.Response:
    """POST /explanations as a client does: a 503 model_not_ready (this request reached an HTTP
    worker process still loading its model, while another answered /ping healthy) is retried after
    its Retry-After."""
    deadline = time.monotonic() + seconds
    while True:
        response = requests.post(api + "/explanations", json=body, timeout=30)
        loading = response.status_code == 503 and response.json()["error"]["code"] == "model_not_ready"
        if not loading or time.monotonic() > deadline:
            return response
        time.sleep(float(response.headers.get("Retry-After", "1")))


def test_jobs_survive_a_killed_worker_and_a_restarted_redis(api: str) -> None:
    assert len(containers("worker")) == 2
    # The shell's EXACT_BACKEND and FAST_BACKEND reached the API (compose passes them through).
    # Each /ping may reach another gunicorn process: the one that answers with a choice is checked.
    pings: list[dict] = []

    def chosen() -> bool:
        pings.append(requests.get(api + "/ping", timeout=10).json())
        return pings[-1].get("fast", {}).get("status", "measuring") != "measuring"

    wait_until(chosen, 120, what="fast's choice")
    assert pings[-1]["fast"].get("reason") == "FAST_BACKEND=exact", pings[-1]
    assert pings[-1]["exact_backend"] == "torch", pings[-1]
    sentences = [f"The {adjective} film kept me watching until the end." for adjective in (
        "quiet", "loud", "long", "short", "strange", "gentle", "clever", "silly", "dark", "bright",
    )]  # fmt: skip
    ids = []
    for sentence in sentences:
        response = submit_when_loaded(api, {"data": sentence, "max_evals": 300})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    jobs: dict[str, dict] = {}

    def status(job_id: str) -> str:
        jobs[job_id] = requests.get(f"{api}/explanations/{job_id}", timeout=10).json()
        return jobs[job_id]["status"]

    wait_until(lambda: any(status(i) == "running" for i in ids), 120, what="a running job")
    podman("kill", containers("worker")[0])
    (redis,) = containers("redis")
    podman("restart", "-t", "10", redis, timeout=60)

    deadline = time.monotonic() + 420
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            try:
                state = status(job_id)
            except (requests.RequestException, ValueError, KeyError):
                continue  # Redis coming back: ask again
            assert state not in {"failed", "cancelled"}, f"job {job_id} {state}: {jobs[job_id]}"
            if state == "succeeded":
                pending.discard(job_id)
        time.sleep(1)
    assert not pending, f"{len(pending)} of 10 jobs never finished"
