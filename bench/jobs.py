"""`python -m bench jobs`: explanation jobs over Redis + Celery: submit-to-succeeded latency, jobs/min."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    median,
    service_env,
    sst2_sentences,
    table,
    write_results,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        default="prefork:1,prefork:2,threads:2,threads:4",
        help="comma list of WORKER_POOL:WORKER_CONCURRENCY (prefork: processes of one job each; "
        "threads: jobs at once in one process, sharing its engine)",
    )
    parser.add_argument("--latency-jobs", type=int, default=10, help="sequential jobs for the latency")
    parser.add_argument("--throughput-jobs", type=int, default=40, help="jobs submitted at once")
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    from tests.support import RedisServer, Worker, running_service, wait_healthy

    if args.smoke:
        # one configuration: the pools themselves are tested in tests/test_jobs.py
        args.configs, args.latency_jobs, args.throughput_jobs, args.max_evals = "threads:2", 1, 2, 64
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",") if c.strip()]
    sentences = iter(sst2_sentences())  # every job a new sentence: nothing comes from the cache
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            for pool, count in configs:
                env = {
                    "MODEL_DIR": args.model_dir,
                    "REDIS_URL": redis.url,
                    "SAGEMAKER_MODEL_SERVER_WORKERS": "1",  # one API process: the workers get the cores
                    "WORKER_CONCURRENCY": str(count),
                    "WORKER_POOL": pool,
                    "ACCESS_LOG": "false",
                    **service_env(args.smoke),
                }
                worker = Worker(Path(tmp), env)
                try:
                    with running_service(Path(tmp), env) as api:
                        wait_healthy(api, timeout=300)
                        _wait_pool(worker, count if pool == "prefork" else 1)
                        _submit_and_wait(api, [next(sentences)], args.max_evals)  # warm
                        latencies = [
                            _submit_and_wait(api, [next(sentences)], args.max_evals)
                            for _ in range(args.latency_jobs)
                        ]
                        batch = [next(sentences) for _ in range(args.throughput_jobs)]
                        started = time.perf_counter()
                        _submit_and_wait(api, batch, args.max_evals)
                        elapsed = time.perf_counter() - started
                finally:
                    worker.stop()
                run = {
                    "pool": pool,
                    "workers": count,
                    "latency_s_median": median(latencies),
                    "latency_s_all": latencies,
                    "throughput_jobs": len(batch),
                    "throughput_s": elapsed,
                    "jobs_per_minute": 60 * len(batch) / elapsed,
                }
                runs.append(run)
                print(_line(run), flush=True)
        finally:
            redis.stop()

    headers = ["pool", "jobs at once", "submit->succeeded p50 s", "jobs", "seconds", "jobs/min"]
    rows = [
        [
            r["pool"],
            str(r["workers"]),
            fmt(r["latency_s_median"], ".3f"),
            str(r["throughput_jobs"]),
            fmt(r["throughput_s"]),
            fmt(r["jobs_per_minute"], ".1f"),
        ]
        for r in runs
    ]
    text = table(headers, rows) + f"\n\none job = one SST-2 sentence, max_evals {args.max_evals}"
    data = {"config": vars(args), "environment": environment(), "runs": runs}
    write_results(Path(args.out or DEFAULT_OUT), "jobs", data, text)
    print(text)
    return 0


def _wait_pool(worker: Any, count: int, timeout: float = 300) -> None:
    """Every pool process has loaded its model."""
    from tests.support import wait_until

    wait_until(lambda: worker.log().count("loaded from") >= count, timeout, what="worker pool to load")


def _submit_and_wait(api: Any, texts: list[str], max_evals: int) -> float:
    """Submit one job per text, poll until all succeeded; return the seconds from first submit."""
    started = time.perf_counter()
    ids = []
    for text in texts:
        response = api.post("/explanations", json={"data": text, "max_evals": max_evals})
        response.raise_for_status()
        ids.append(response.json()["id"])
    pending = list(ids)  # jobs finish roughly in submission order: poll the oldest unfinished one
    while pending:
        status = api.get(f"/explanations/{pending[0]}").json()["status"]
        if status == "succeeded":
            pending.pop(0)
            continue
        if status in {"failed", "cancelled"}:
            raise RuntimeError(f"job {pending[0]} {status}")
        time.sleep(0.05)  # polling faster would take CPU from the workers on a small machine
    return time.perf_counter() - started


def _line(run: dict[str, Any]) -> str:
    return (
        f"{run['pool']} x{run['workers']}: submit->succeeded p50 {run['latency_s_median']:.3f}s | "
        f"{run['throughput_jobs']} jobs in {run['throughput_s']:.1f}s = {run['jobs_per_minute']:.1f} jobs/min"
    )
