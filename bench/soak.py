"""`python -m bench soak`: mixed traffic at a steady rate for a bounded time, against the
single-process service and against API + Redis + worker processes.

Traffic: classifications, synchronous explanations, explanation jobs (polled to the end) and bad
inputs, sent open-loop at `--rate` requests/s. Reported: requests by kind and status, latency
percentiles, every process's RSS over time (growth after warm-up), jobs finished.
Targets: no 5xx, every job finished, RSS growth after warm-up at most 5 %.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    quiet_transformers,
    rss_by_process,
    service_env,
    sst2_sentences,
    table,
    write_results,
)

BAD_INPUTS: list[dict[str, Any]] = [
    {"data": b'{"data": "x"', "headers": {"Content-Type": "application/json"}},
    {"json": {"data": []}},
    {"json": {"data": "x", "explain": True, "max_evals": 1}},
    {"json": {"data": "x", "labels": ["nope"], "explain": True}},
    {"data": b'{"data": "\\ud800"}', "headers": {"Content-Type": "application/json"}},
    {"data": b"x", "headers": {"Content-Type": "image/png"}},
    {"json": {"inputs": "x", "parameters": {"seed": -1}}},
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of traffic per target")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second, all kinds together")
    parser.add_argument("--targets", default="single,broker", help="comma list of: single, broker")
    parser.add_argument("--max-evals", type=int, default=100, help="of explanations and jobs")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before RSS growth is measured")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    if args.smoke:
        # 28 requests in 3.5 s (seeded: bad inputs from the 4th, jobs the 21st and 24th)
        args.duration, args.rate, args.max_evals = 3.5, 8.0, 40
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 5)
    runs = [_soak(target, args, warmup) for target in args.targets.split(",") if target.strip()]
    data = {"config": vars(args) | {"warmup": warmup}, "environment": environment(), "runs": runs}
    write_results(Path(args.out or DEFAULT_OUT), "soak", data, _report(runs))
    return 0


def _soak(target: str, args: argparse.Namespace, warmup: float) -> dict[str, Any]:
    from tests.support import RedisServer, Worker, running_service, wait_healthy

    env = {"MODEL_DIR": args.model_dir, "ACCESS_LOG": "false", "HTTP_THREADS": "16"}
    env |= service_env(args.smoke)
    with tempfile.TemporaryDirectory(prefix="clarion-soak-") as tmp:
        redis = worker = None
        if target == "broker":
            redis = RedisServer(Path(tmp))
            redis.start()
            env |= {
                "REDIS_URL": redis.url,
                "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                "WORKER_CONCURRENCY": "1",
                "TORCH_THREADS": "1",
            }
            worker = Worker(Path(tmp), env)
        elif target == "single":
            env["SERVERLESS"] = "true"
        else:
            raise SystemExit(f"--targets: unknown {target!r}")
        try:
            with running_service(Path(tmp), env) as api:
                wait_healthy(api, timeout=300)
                if worker is not None:
                    worker.wait_ready(timeout=300)
                groups = [api.process.pid] + ([worker.process.pid] if worker else [])
                result = _traffic(api.url, args, warmup, groups)
                result["target"] = target
                return result
        finally:
            if worker is not None:
                worker.stop()
            if redis is not None:
                redis.stop()


def _traffic(url: str, args: argparse.Namespace, warmup: float, groups: list[int]) -> dict[str, Any]:
    import requests

    sentences = sst2_sentences()
    rng = random.Random(0)
    statuses: dict[str, Counter[int]] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    jobs: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session

    def send(kind: str, request: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            response = session().post(url + request.pop("path", "/invocations"), timeout=120, **request)
            status = response.status_code
        except requests.RequestException:
            status = 0  # no answer at all
            response = None
        with lock:
            statuses[kind][status] += 1
            latencies[kind].append(time.perf_counter() - started)
            if kind == "job" and status in (200, 202) and response is not None:  # 200: ran inline
                jobs.append(response.json()["id"])

    def one() -> tuple[str, dict[str, Any]]:
        text = rng.choice(sentences)
        roll = rng.random()
        if roll < 0.5:
            return "classify", {"json": {"data": text}}
        if roll < 0.65:
            return "explain", {"json": {"data": text, "explain": True, "max_evals": args.max_evals}}
        if roll < 0.8:
            return "job", {"path": "/explanations", "json": {"data": text, "max_evals": args.max_evals}}
        return "bad input", dict(rng.choice(BAD_INPUTS))

    rss: list[dict[str, Any]] = []
    stop = threading.Event()

    def sample() -> None:
        started = time.perf_counter()
        while not stop.is_set():
            rss.append({"t": time.perf_counter() - started, "rss_mib": rss_by_process(groups)})
            stop.wait(5.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    sent = 0
    with ThreadPoolExecutor(32) as pool:
        while (elapsed := time.perf_counter() - started) < args.duration:
            target = sent / args.rate
            if elapsed < target:
                time.sleep(min(0.05, target - elapsed))
                continue
            kind, request = one()
            pool.submit(send, kind, request)
            sent += 1
    finished = _wait_for_jobs(url, jobs, timeout=max(120.0, args.duration))
    stop.set()
    sampler.join()
    return {
        "duration_s": args.duration,
        "sent": sent,
        "statuses": {kind: {str(k): v for k, v in sorted(c.items())} for kind, c in statuses.items()},
        "server_errors": sum(v for c in statuses.values() for k, v in c.items() if k >= 500 or k == 0),
        "latency_ms": {kind: _percentiles(values) for kind, values in latencies.items()},
        "jobs": {"accepted": len(jobs), **finished},
        "rss": rss,
        "rss_growth": _growth(rss, warmup),
    }


def _wait_for_jobs(url: str, ids: list[str], timeout: float) -> dict[str, int]:
    import requests

    outcome: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    pending = list(ids)
    with requests.Session() as session:
        while pending and time.monotonic() < deadline:
            status = session.get(f"{url}/explanations/{pending[0]}", timeout=30).json().get("status")
            if status in {"succeeded", "failed", "cancelled"}:
                outcome[status] += 1
                pending.pop(0)
            else:
                time.sleep(0.1)
    return {"succeeded": outcome["succeeded"], "failed": outcome["failed"], "unfinished": len(pending)}


def _growth(samples: list[dict[str, Any]], warmup: float) -> dict[str, float | None]:
    """Per process: RSS at the end over RSS at the first sample after warm-up, minus 1."""
    after = [s for s in samples if s["t"] >= warmup]
    if len(after) < 2:
        return {}
    first, last = after[0]["rss_mib"], after[-1]["rss_mib"]
    return {name: last[name] / first[name] - 1 for name in first if name in last and first[name] > 0}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(seconds)}


def _report(runs: list[dict[str, Any]]) -> str:
    lines = []
    for run in runs:
        lines.append(
            f"{run['target']}: {run['sent']} requests in {run['duration_s']:.0f} s, "
            f"5xx or no answer: {run['server_errors']}, jobs {run['jobs']}"
        )
        rows = [
            [
                kind,
                " ".join(f"{k}:{v}" for k, v in run["statuses"][kind].items()),
                fmt(p["p50"], ".0f"),
                fmt(p["p99"], ".0f"),
            ]
            for kind, p in sorted(run["latency_ms"].items())
        ]
        lines.append(table(["kind", "statuses", "p50 ms", "p99 ms"], rows))
        growth = run["rss_growth"]
        worst = max(growth.values(), default=None)
        lines.append(
            "RSS growth after warm-up: "
            + (", ".join(f"{name} {100 * g:+.1f}%" for name, g in sorted(growth.items())) or "-")
            + (f" (worst {100 * worst:+.1f}%)" if worst is not None else "")
        )
        lines.append("")
    return "\n".join(lines)
