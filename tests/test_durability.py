"""Nothing accepted is lost when Redis itself dies: kill -9 of Redis (and of the worker) after the
202s, restart both, and every accepted job finishes with the synchronous numbers."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np

from tests.support import Worker, assert_close_to_scale, job_stack, wait_until

TEXTS = [
    f"{opening} film, {verdict} acting."
    for opening in ("A fine", "A dull", "An odd", "A warm", "A cold")
    for verdict in ("superb", "wooden", "uneven", "moving")
]


def test_jobs_answered_202_survive_a_redis_kill(sst2_dir: Path, tmp_path: Path) -> None:
    # The persistence docs/api.md and docker-compose.yml recommend: append-only, fsync every write.
    env = {
        "MODEL_DIR": str(sst2_dir),
        "WORKER_CONCURRENCY": "1",
        "TORCH_THREADS": "1",
        # A job here takes well under a second: limits this short keep the wait for redelivery short.
        "JOB_SOFT_TIME_LIMIT": "10",
        "JOB_TIME_LIMIT": "12",
        "JOB_VISIBILITY_TIMEOUT": "13",  # the killed worker's job is redelivered after this
        "EXPLANATION_CACHE_SIZE": "0",
    }
    with job_stack(tmp_path, env, fsync_always=True) as stack:
        api = stack.api
        accepted = []
        for text in TEXTS:
            response = api.post("/explanations", json={"data": text, "max_evals": 64})
            assert response.status_code == 202, response.text
            accepted.append(response.json()["id"])
        time.sleep(random.Random(7).uniform(0.0, 1.5))  # some jobs done, one running, most queued
        stack.redis.kill()
        stack.worker.kill()
        stack.redis.start()  # same port, same data directory
        stack.worker = Worker(tmp_path, stack.env)
        stack.worker.wait_ready()

        def all_finished() -> bool:
            states = [api.get(f"/explanations/{job_id}").json().get("status") for job_id in accepted]
            return all(state in {"succeeded", "failed", "cancelled"} for state in states)

        wait_until(all_finished, 180, interval=0.5, what="every accepted job to finish")
        for text, job_id in zip(TEXTS, accepted, strict=True):
            job = api.get(f"/explanations/{job_id}").json()
            assert job["status"] == "succeeded", job
            synchronous = api.post("/invocations", json={"data": text, "explain": True, "max_evals": 64})
            values = np.array([list(d.values()) for _, d in job["result"]["explanation"]])
            expected = np.array([list(d.values()) for _, d in synchronous.json()["explanation"]])
            assert_close_to_scale(values, expected, rel=1e-4)  # float32 noise, as in tests/test_jobs.py
