"""Workers as Kubernetes stops and scales them, on a real Redis and real Celery worker processes.

KEDA scales workers down with SIGTERM, a node or an out-of-memory kill takes a whole worker with
SIGKILL, and KEDA scales up on the length of the queue's Redis list. So: a worker that gets SIGTERM
(its main process, as the kubelet sends it, or its whole process group) finishes its running job;
a job whose whole worker died runs again within its lease, long before Celery's visibility timeout;
no job is lost or completed twice; and the list the scaler reads holds every waiting job. Whether a
job is running when a test acts is decided by its stored progress, never by the clock.
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
import redis
import requests

from shared.jobs.broker import QUEUE
from shared.jobs.lease import LEASE_PREFIX, LEASED, Delivery, Leases
from tests.support import Service, Worker, job_stack, successes, wait_until
from tests.test_jobs import LONG_JOB, poll, poll_progress

LEASE_S = 3
# Long enough that only the lease can explain a quick rerun, short enough that the dead worker's
# message comes back within the test, so that its late redelivery is seen doing nothing.
VISIBILITY_S = 20


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("leases")
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "WORKER_CONCURRENCY": "1",
        "TORCH_THREADS": "1",
        "JOB_SOFT_TIME_LIMIT": "120",
        "JOB_TIME_LIMIT": "130",
        "JOB_LEASE": str(LEASE_S),
        "JOB_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
        "JOB_PUBLISH_GRACE": "2",
        "MAX_EVALS_LIMIT": "200000",
        "HTTP_THREADS": "4",
        "EXPLANATION_CACHE_SIZE": "0",
    }
    with job_stack(tmp, env) as stack:
        yield stack


def submit(api: Service, seed: int) -> str:
    response = api.post("/explanations", json=dict(LONG_JOB, seed=seed))
    assert response.status_code == 202, response.text
    return response.json()["id"]


def running_on(worker: Worker, job_ids: list[str]) -> str | None:
    """The job this worker took last (its log names it), if any of `job_ids`."""
    taken = [job_id for job_id in re.findall(r"clarion\.explain\[([0-9a-f]{32})\] received", worker.log())]
    taken = [job_id for job_id in taken if job_id in job_ids]
    return taken[-1] if taken else None


def exited(worker: Worker, timeout: float) -> int:
    wait_until(lambda: worker.process.poll() is not None, timeout, what="the worker to exit")
    return worker.process.returncode


def test_the_scalers_list_holds_every_waiting_job(stack) -> None:
    """One worker, one job at a time: the job it runs is not in the list, the other three are, none
    is hidden in a prefetch; /metrics reports the same number."""
    api: Service = stack.api
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    jobs = [submit(api, seed) for seed in range(4)]
    poll_progress(api, jobs[0])
    assert client.llen(QUEUE) == 3
    metrics = requests.get(api.url + "/metrics", timeout=10).text
    assert re.search(r"^clarion_jobs_pending 3\.0$", metrics, re.MULTILINE), metrics
    for job_id in jobs:
        assert requests.delete(f"{api.url}/explanations/{job_id}", timeout=10).status_code == 200
    wait_until(lambda: client.llen(QUEUE) == 0, 60, what="the cancelled jobs to leave the queue")
    for job_id in jobs:
        assert poll(api, job_id, {"cancelled"})["status"] == "cancelled"


def test_a_worker_that_gets_sigterm_finishes_its_job_then_exits(stack) -> None:
    """SIGTERM to the worker's main process, as the kubelet sends it to PID 1 (the whole process
    group's SIGTERM is the next test's)."""
    api: Service = stack.api
    job_id = submit(api, seed=10)
    poll_progress(api, job_id)
    worker: Worker = stack.worker
    worker.process.send_signal(signal.SIGTERM)
    assert exited(worker, timeout=120) == 0
    finished = api.get(f"/explanations/{job_id}").json()
    assert finished["status"] == "succeeded", finished  # before the worker exited
    assert finished["attempts"] == 1
    assert successes(job_id, worker) == 1
    assert "WorkerLostError" not in worker.log()
    assert "SIGTERM: finishing the running task first" not in worker.log()  # its pool process got none
    stack.worker = Worker(stack.tmp, stack.env)
    stack.worker.wait_ready()


def test_dead_workers_jobs_run_again_within_the_lease_and_complete_once(stack) -> None:
    """Six jobs on two workers; one worker's process group gets SIGTERM mid-job, the other is
    SIGKILLed whole (each while it runs a long job, four short ones waiting); a fresh worker
    starts. All six succeed, each exactly once: the killed worker's job runs again within its
    lease, and the late redelivery of its message does nothing."""
    api: Service = stack.api
    first: Worker = stack.worker
    second = Worker(stack.tmp, stack.env)
    workers = [first, second]
    fresh: Worker | None = None
    try:
        second.wait_ready()
        # Two long jobs, one per worker, then four short ones waiting behind them.
        jobs = [submit(api, seed) for seed in (20, 21)]
        for seed in range(22, 26):
            response = api.post("/explanations", json={"data": f"a short text {seed}", "max_evals": 50})
            jobs.append(response.json()["id"])

        def both_running() -> bool:
            return all(running_on(w, jobs) for w in workers)

        wait_until(both_running, 120, what="each worker to take a job")
        stopped, killed = running_on(first, jobs), running_on(second, jobs)
        assert stopped and killed and stopped != killed
        poll_progress(api, stopped)
        poll_progress(api, killed)
        os.killpg(first.process.pid, signal.SIGTERM)
        second.kill()
        killed_at = time.time()
        assert api.get(f"/explanations/{killed}").json()["status"] == "running"  # as its worker left it
        # The lease lapses within LEASE_S of the kill, the API's sweeper finds it within a third of
        # a lease more and publishes it again: it waits in the queue for a worker.
        client = redis.Redis.from_url(stack.env["REDIS_URL"])

        def republished() -> bool:
            return any(killed.encode() in message for message in client.lrange(QUEUE, 0, -1))

        wait_until(republished, 60, interval=0.05, what="the killed worker's job to be published again")
        republished_after = time.time() - killed_at
        assert republished_after < LEASE_S * 3, republished_after
        assert exited(first, timeout=120) == 0  # the SIGTERMed worker took nothing more
        assert poll(api, stopped, {"succeeded", "failed"})["status"] == "succeeded"
        # Its pool process got the SIGTERM too, and waited for its job instead of dying with it.
        assert "SIGTERM: finishing the running task first" in first.log()
        assert "WorkerLostError" not in first.log()
        assert successes(stopped, first) == 1
        fresh = Worker(stack.tmp, stack.env)
        workers.append(fresh)
        fresh.wait_ready()
        finished = {job_id: poll(api, job_id, {"succeeded", "failed"}, timeout=300) for job_id in jobs}
        assert {state["status"] for state in finished.values()} == {"succeeded"}, finished
        assert finished[killed]["attempts"] == 2
        # Accepted before the four waiting jobs, it went to the front of the queue: it ran first.
        short = [job_id for job_id in jobs if job_id not in (stopped, killed)]
        assert finished[killed]["started_at"] < min(finished[job_id]["started_at"] for job_id in short)
        assert datetime.fromisoformat(finished[killed]["started_at"]).timestamp() > killed_at
        assert all(finished[job_id]["attempts"] == 1 for job_id in jobs if job_id != killed)
        for job_id in jobs:
            assert successes(job_id, *workers) == 1, job_id
        # The killed worker's own message comes back after the visibility timeout: it runs nothing.
        late = re.compile(
            rf"job {killed}: not run \(succeeded\)|task {killed}: another worker holds its lease"
        )
        wait_until(lambda: late.search(fresh.log()), VISIBILITY_S * 3, what="the late redelivery")
        assert successes(killed, *workers) == 1
        assert client.hlen(LEASED) == 0 and not client.keys(LEASE_PREFIX + "*")
    finally:
        for worker in workers[1:]:
            worker.stop()
        stack.worker = Worker(stack.tmp, stack.env)
        stack.worker.wait_ready()


def test_a_job_that_keeps_losing_its_worker_fails_after_max_attempts(stack) -> None:
    """A text that kills its worker (out of memory) must not take every worker down in turn."""
    api: Service = stack.api
    job_id = submit(api, seed=30)
    poll_progress(api, job_id)
    stack.worker.kill()
    stack.worker = Worker(stack.tmp, {**stack.env, "JOB_MAX_ATTEMPTS": "1"})
    stack.worker.wait_ready()
    failed = poll(api, job_id, {"succeeded", "failed"}, timeout=120)
    assert failed["status"] == "failed"
    assert failed["attempts"] == 1  # started once (JOB_MAX_ATTEMPTS), lost, and not started again
    assert "ran out of attempts" in failed["error"]["message"]
    quick = api.post("/explanations", json={"data": "fine", "max_evals": 50}).json()
    assert poll(api, quick["id"], {"succeeded", "failed"})["status"] == "succeeded"


def test_one_lease_per_task_and_one_claim_per_lapse(stack) -> None:
    """The lease primitives on the real Redis: a second token cannot take a held lease, a lapsed
    one is claimed by one sweeper only, and a release keeps a newer holder's note. (Another database
    of the same server: the stack's own sweeper would claim these lapsed leases too.)"""
    client = redis.Redis.from_url(stack.env["REDIS_URL"].rsplit("/", 1)[0] + "/15")
    assert client.connection_pool.connection_kwargs["db"] == 15
    leases = Leases(client, lease_s=0.3)
    delivery = Delivery("t" * 32, "clarion.explain", [["a text"], {"max_evals": 8}])
    held = leases.acquire(delivery)
    assert held is not None
    assert leases.acquire(delivery) is None  # another delivery of the same task does not run
    assert list(leases.lapsed()) == []  # held: nothing to claim
    time.sleep(0.5)
    assert list(leases.lapsed()) == [delivery]  # lapsed: claimed, with how to publish it again
    assert list(leases.lapsed()) == []  # once
    newer = leases.acquire(delivery)
    assert newer is not None
    held.renew()
    assert held.lost  # the old holder learns that another delivery runs the task
    leases.release(held)
    assert client.hexists(LEASED, delivery.task_id)  # the newer holder's note stays
    leases.release(newer)
    assert not client.hexists(LEASED, delivery.task_id)
