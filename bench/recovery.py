"""`python -m bench recovery`: workers stopped as Kubernetes stops them, with the default settings.

Six long jobs on two workers (one job at a time each). Once each worker runs one, one worker's
process group gets SIGTERM (a scale-down) and the other is SIGKILLed whole (a node lost, an
out-of-memory kill); a fresh worker starts. Measured: whether every job succeeds, how many times each
completed, and how long after the SIGKILL its job was published again (its lease lapsed: JOB_LEASE)
and started again, against Celery's visibility timeout, which alone would have brought it back.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_OUT, MINILM_DIR, environment, fmt, sst2_sentences, table, write_results

_RECEIVED = re.compile(r"clarion\.explain\[([0-9a-f]{32})\] received")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--max-evals", type=int, default=3000, help="of each job (its length)")
    parser.add_argument("--sentences", type=int, default=6, help="SST-2 sentences in each job's document")
    parser.add_argument("--lease", type=int, default=None, help="JOB_LEASE (default: the setting's)")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    from shared.settings import Settings
    from tests.support import RedisServer

    if args.smoke:
        args.jobs, args.max_evals, args.sentences, args.lease = 4, 600, 2, 3
    defaults = Settings()
    sentences = sst2_sentences()
    documents = [" ".join(sentences[i * args.sentences : (i + 1) * args.sentences]) for i in range(args.jobs)]
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        env = {
            "MODEL_DIR": args.model_dir,
            "REDIS_URL": redis.url,
            "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
            "WORKER_CONCURRENCY": "1",
            "TORCH_THREADS": "1",
            "MAX_EVALS_LIMIT": str(max(args.max_evals, defaults.max_evals_limit)),
            "EXPLANATION_CACHE_SIZE": "0",
            "ACCESS_LOG": "false",
            **({"JOB_LEASE": str(args.lease)} if args.lease else {}),
        }
        try:
            result = _scenario(Path(tmp), env, redis.url, documents, args.max_evals)
        finally:
            redis.stop()
    result |= {
        "lease_s": args.lease or defaults.job_lease_s,
        "visibility_timeout_s": defaults.visibility_timeout_s,
    }
    rows = [
        [j["job"][:8], j["worker"], j["status"], str(j["attempts"]), str(j["completed"])]
        for j in result["jobs"]
    ]
    text = (
        table(["job", "its worker got", "status", "attempts", "times completed"], rows)
        + f"\n\nJOB_LEASE {result['lease_s']} s: the SIGKILLed worker's job was published again "
        f"{fmt(result['published_again_s'], '.1f')} s and started again "
        f"{fmt(result['started_again_s'], '.1f')} s after the kill (Celery's visibility timeout alone: "
        f"{result['visibility_timeout_s']} s); every job had finished "
        f"{fmt(result['all_finished_s'], '.1f')} s after it; the SIGTERMed worker finished its job "
        f"and exited with {result['sigterm_exit_code']}. "
        f"{args.jobs} jobs of {args.sentences} SST-2 sentences each, max_evals {args.max_evals}; "
        "two workers of one process and one torch thread each, then a fresh one."
    )
    data = {"config": vars(args), "environment": environment(), **result}
    write_results(Path(args.out or DEFAULT_OUT), "recovery", data, text)
    print(text)
    return 0


def _scenario(tmp: Path, env: dict[str, str], redis_url: str, documents: list[str], max_evals: int) -> dict:
    from shared.jobs.lease import LEASED
    from shared.kinds import FINISHED
    from shared.storage.redis import redis_client
    from tests.support import Worker, running_service, wait_healthy, wait_until

    workers = [Worker(tmp, env), Worker(tmp, env)]
    try:
        with running_service(tmp, env) as api:
            wait_healthy(api, timeout=300)
            for worker in workers:
                worker.wait_ready(timeout=300)
            ids = [_submit(api, document, max_evals) for document in documents]
            wait_until(lambda: all(_running(api, w) for w in workers), 600, what="each worker to run a job")
            stopped, killed = _taken(workers[0]), _taken(workers[1])
            first_start = _state(api, killed)["started_at"]
            os.killpg(workers[0].process.pid, signal.SIGTERM)
            workers[1].kill()
            killed_at = time.monotonic()
            workers.append(Worker(tmp, env))

            def restarted() -> bool:
                return _state(api, killed)["started_at"] != first_start

            # The sweeper's claim removes the job's lease note; its next start notes it again.
            client = redis_client(redis_url)
            wait_until(lambda: not client.hexists(LEASED, killed) or restarted(), 600, 0.1, "the claim")
            published_again = time.monotonic() - killed_at
            wait_until(restarted, 600, 0.2, "the job to start again")
            started_again = time.monotonic() - killed_at
            exit_code = workers[0].process.wait(timeout=600)
            wait_until(lambda: all(_state(api, i)["status"] in FINISHED for i in ids), 1800, 1.0, "the jobs")
            all_finished = time.monotonic() - killed_at
            states = {i: _state(api, i) for i in ids}
    finally:
        for worker in workers:
            worker.stop()
    logs = [w.log() for w in workers]
    jobs = [
        {
            "job": i,
            "worker": "SIGTERM" if i == stopped else "SIGKILL" if i == killed else "-",
            "status": states[i]["status"],
            "attempts": states[i].get("attempts"),
            "completed": sum(log.count(f"job {i} succeeded") for log in logs),
        }
        for i in ids
    ]
    return {
        "published_again_s": published_again,
        "started_again_s": started_again,
        "all_finished_s": all_finished,
        "sigterm_exit_code": exit_code,
        "jobs": jobs,
    }


def _submit(api: Any, document: str, max_evals: int) -> str:
    response = api.post("/explanations", json={"data": document, "max_evals": max_evals})
    response.raise_for_status()
    return response.json()["id"]


def _state(api: Any, job_id: str) -> dict[str, Any]:
    return api.get(f"/explanations/{job_id}").json()


def _taken(worker: Any) -> str | None:
    """The job this worker took last (each takes one at a time)."""
    found = _RECEIVED.findall(worker.log())
    return found[-1] if found else None


def _running(api: Any, worker: Any) -> bool:
    """The worker runs a job that has stored some progress."""
    job_id = _taken(worker)
    if job_id is None:
        return False
    state = _state(api, job_id)
    return state["status"] == "running" and state.get("progress", {}).get("done", 0) > 0
