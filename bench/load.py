"""`python -m bench load`: the engine under load, over real HTTP against `clarion serve` (cache off).

1. Classification latency (and /ping's) while K clients explain long reviews, for each K.
2. An oversized synchronous request with a short timeout: seconds from the deadline to the 503, and
   how long the next request then takes.
3. 12 short explanations sent by 8 concurrent clients against the same 12 sent one by one
   (interleaved, repeated; medians).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    quiet_transformers,
    service_env,
    sst2_sentences,
    table,
    write_results,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", default="0,2,6", help="comma list of explaining clients (K)")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of load per K")
    parser.add_argument("--long-tokens", type=int, default=200, help="tokens per long review")
    parser.add_argument("--long-max-evals", type=int, default=300)
    parser.add_argument("--timeout", type=int, default=10, help="SAGEMAKER_MODEL_SERVER_TIMEOUT of part 2")
    parser.add_argument("--oversized-max-evals", type=int, default=5000)
    parser.add_argument("--short-max-evals", type=int, default=500)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of part 3 (concurrent, then sequential)"
    )
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    if args.smoke:
        args.clients, args.duration, args.long_tokens, args.long_max_evals = "0,2", 2.0, 60, 60
        args.timeout, args.oversized_max_evals, args.short_max_evals, args.repeats = 2, 2000, 64, 1
    levels = [int(k) for k in args.clients.split(",") if k.strip()]
    sentences = sst2_sentences()
    reviews = _long_reviews(args.model_dir, sentences[100:], args.long_tokens, 8)
    short = sentences[: 4 if args.smoke else 12]  # a smoke: 4 clients at once still share passes

    env = service_env(args.smoke)
    with _service(args.model_dir, env) as url:
        _post(url, {"data": short[0], "explain": True, "max_evals": 32})  # warm up the explainer
        load_runs = [_under_load(url, reviews, k, args.duration, args.long_max_evals) for k in levels]
        for run in load_runs:
            print(_load_line(run), flush=True)
        concurrency = _concurrent_vs_sequential(url, short, args.short_max_evals, args.repeats)
        print(_concurrency_line(concurrency), flush=True)
    with _service(args.model_dir, {"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(args.timeout), **env}) as url:
        deadline = _oversized(url, reviews, args.timeout, args.oversized_max_evals)
        print(_deadline_line(deadline), flush=True)

    data = {
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "environment": environment(),
        "load": load_runs,
        "deadline": deadline,
        "concurrency": concurrency,
    }
    write_results(Path(args.out or DEFAULT_OUT), "load", data, _report(load_runs, deadline, concurrency))
    return 0


# ---- the service and its clients ---------------------------------------------------------------


@contextmanager
def _service(model_dir: str, extra: dict[str, str]) -> Iterator[str]:
    from tests.support import running_service, wait_healthy

    env = {"MODEL_DIR": model_dir, "SERVERLESS": "true", "EXPLANATION_CACHE_SIZE": "0", **extra}
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp, running_service(Path(tmp), env) as svc:
        wait_healthy(svc, timeout=300)
        yield svc.url


def _post(url: str, body: dict[str, Any], timeout: float = 600) -> tuple[int, float]:
    import requests

    started = time.perf_counter()
    response = requests.post(url + "/invocations", json=body, timeout=timeout)
    return response.status_code, time.perf_counter() - started


def _long_reviews(model_dir: str, sentences: list[str], tokens: int, count: int) -> list[str]:
    """Reviews of about `tokens` tokens, joined from consecutive SST-2 sentences."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    reviews, current, length = [], [], 2
    for sentence in sentences:
        current.append(sentence)
        length += len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
        if length >= tokens:
            reviews.append(" ".join(current))
            current, length = [], 2
            if len(reviews) == count:
                break
    return reviews


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


# ---- 1. classification and /ping while K clients explain -----------------------------------------


def _under_load(
    url: str, reviews: list[str], clients: int, duration: float, max_evals: int
) -> dict[str, Any]:
    import requests

    stop = time.perf_counter() + duration
    explain_status: Counter[int] = Counter()
    explain_seconds: list[float] = []
    classify_seconds: list[float] = []
    classify_errors: Counter[int] = Counter()
    ping_seconds: list[float] = []
    lock = threading.Lock()

    def explainer(i: int) -> None:
        n = i
        while time.perf_counter() < stop:
            body = {"data": reviews[n % len(reviews)], "explain": True, "max_evals": max_evals}
            status, seconds = _post(url, body)
            with lock:
                explain_status[status] += 1
                explain_seconds.append(seconds)
            n += clients

    def classifier() -> None:
        with requests.Session() as session:
            n = 0
            while time.perf_counter() < stop:
                started = time.perf_counter()
                response = session.post(
                    url + "/invocations", json={"data": reviews[n % 8][:200]}, timeout=120
                )
                elapsed = time.perf_counter() - started
                with lock:
                    if response.ok:
                        classify_seconds.append(elapsed)
                    else:
                        classify_errors[response.status_code] += 1
                n += 1
                time.sleep(0.2)

    def pinger() -> None:
        with requests.Session() as session:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                session.get(url + "/ping", timeout=30)
                with lock:
                    ping_seconds.append(time.perf_counter() - started)
                time.sleep(0.25)

    threads = [threading.Thread(target=explainer, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    if clients:
        time.sleep(min(2.0, duration / 4))  # the probes meet an engine that is already busy
    probes = [threading.Thread(target=classifier, daemon=True), threading.Thread(target=pinger, daemon=True)]
    for t in probes:
        t.start()
    for t in probes + threads:
        t.join()
    return {
        "clients": clients,
        "classify": {"requests": len(classify_seconds), "errors": dict(classify_errors)}
        | _percentiles(classify_seconds),
        "ping": {"requests": len(ping_seconds)} | _percentiles(ping_seconds),
        "explain": {"by_status": dict(explain_status), "median_s": _median(explain_seconds)},
    }


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---- 2. an oversized request meets its deadline --------------------------------------------------


def _oversized(url: str, reviews: list[str], timeout: int, max_evals: int) -> dict[str, Any]:
    body = {"data": reviews[:8], "explain": True, "max_evals": max_evals}
    status, seconds = _post(url, body)
    next_status, next_seconds = _post(url, {"data": "a quick one"})
    return {
        "timeout_s": timeout,
        "status": status,
        "answered_after_s": seconds,
        "after_deadline_s": seconds - timeout,
        "next_status": next_status,
        "next_request_ms": 1000 * next_seconds,
    }


# ---- 3. concurrent explanations share passes ----------------------------------------------------


def _concurrent_vs_sequential(url: str, texts: list[str], max_evals: int, repeats: int) -> dict[str, Any]:
    def one(text: str) -> int:
        return _post(url, {"data": text, "explain": True, "max_evals": max_evals})[0]

    concurrent_s, sequential_s, statuses = [], [], Counter()
    for _ in range(repeats):  # interleaved: both see the same machine
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            statuses.update(pool.map(one, texts))
        concurrent_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        statuses.update(one(t) for t in texts)
        sequential_s.append(time.perf_counter() - started)
    c, s = statistics.median(concurrent_s), statistics.median(sequential_s)
    return {
        "texts": len(texts),
        "clients": 8,
        "max_evals": max_evals,
        "concurrent_s": concurrent_s,
        "sequential_s": sequential_s,
        "median_concurrent_s": c,
        "median_sequential_s": s,
        "concurrent_over_sequential": c / s,
        "statuses": dict(statuses),
    }


# ---- report --------------------------------------------------------------------------------------


def _load_line(run: dict[str, Any]) -> str:
    c, p = run["classify"], run["ping"]
    return (
        f"K={run['clients']}: classify p50 {fmt(c['p50_ms'], '.0f')} ms p99 {fmt(c['p99_ms'], '.0f')} ms "
        f"({c['requests']} ok, errors {c['errors']}) | ping p50 {fmt(p['p50_ms'], '.1f')} ms "
        f"p99 {fmt(p['p99_ms'], '.1f')} ms | explanations {run['explain']['by_status']}"
    )


def _deadline_line(d: dict[str, Any]) -> str:
    return (
        f"oversized request, timeout {d['timeout_s']} s: HTTP {d['status']} "
        f"after {d['answered_after_s']:.2f} s "
        f"({d['after_deadline_s']:+.2f} s from the deadline); next request HTTP {d['next_status']} in "
        f"{d['next_request_ms']:.0f} ms"
    )


def _concurrency_line(c: dict[str, Any]) -> str:
    return (
        f"{c['texts']} short explanations: 8 concurrent clients {c['median_concurrent_s']:.2f} s, one by one "
        f"{c['median_sequential_s']:.2f} s (median of {len(c['concurrent_s'])}): "
        f"concurrent/sequential {c['concurrent_over_sequential']:.2f}x; statuses {c['statuses']}"
    )


def _report(load_runs: list[dict[str, Any]], deadline: dict[str, Any], concurrency: dict[str, Any]) -> str:
    headers = [
        "K explaining",
        "classify p50 ms",
        "classify p99 ms",
        "ping p50 ms",
        "ping p99 ms",
        "explanations",
    ]
    rows = [
        [
            str(r["clients"]),
            fmt(r["classify"]["p50_ms"], ".0f"),
            fmt(r["classify"]["p99_ms"], ".0f"),
            fmt(r["ping"]["p50_ms"], ".1f"),
            fmt(r["ping"]["p99_ms"], ".1f"),
            " ".join(f"{k}:{v}" for k, v in sorted(r["explain"]["by_status"].items())) or "-",
        ]
        for r in load_runs
    ]
    return "\n".join([table(headers, rows), "", _deadline_line(deadline), _concurrency_line(concurrency)])
