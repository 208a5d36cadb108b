"""`python -m bench classify`: HTTP requests/s and p50/p99 latency by concurrency, batching on and off."""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
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
    ratio,
    service_env,
    sst2_sentences,
    table,
    timed,
    write_results,
)

REFERENCE_BATCH = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", default="1,8,32", help="comma list of client thread counts")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--duration", type=float, default=60.0, help="cap in seconds per level")
    parser.add_argument("--url", default=None, help="benchmark this running service instead of starting one")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


def main(args: argparse.Namespace) -> int:
    quiet_transformers()
    if args.smoke:
        args.concurrency, args.requests = "1,4", 20
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    sentences = sst2_sentences()
    reference = _in_process_throughput(args.model_dir, sentences, batches=2 if args.smoke else 10)
    print(f"in-process model.forward, batches of {REFERENCE_BATCH}: {reference:.1f} sentences/s", flush=True)

    modes = [("url", None)] if args.url else [("batching", "on"), ("no-batching", "off")]
    runs: list[dict[str, Any]] = []
    for mode, merging in modes:
        with _service(args, merging, cache=False) as url:
            _warm_up(url, sentences)
            for level in levels:
                run = {"mode": mode, "micro_batching": merging, "concurrency": level}
                run.update(_load(url, sentences, level, args.requests, args.duration))
                runs.append(run)
                print(_row_line(run), flush=True)

    with _service(args, "on", cache=True) as url:
        # a smoke's first (uncached) explanation need not walk the default 500 evaluations
        repeat_ms = _repeated_explanation_ms(url, sentences[-1], max_evals=64 if args.smoke else None)
    print(f"repeated identical explanation request: {repeat_ms:.1f} ms", flush=True)

    ratios = _ratios(runs, levels)
    data = {
        "config": {k: getattr(args, k) for k in ("concurrency", "requests", "duration", "url", "smoke")},
        "environment": environment(),
        "in_process_sentences_per_s": reference,
        "repeated_explanation_ms": repeat_ms,
        "runs": runs,
        "ratios": ratios,
    }
    lines = [_table(runs), "", f"in-process reference (model.forward, batches of {REFERENCE_BATCH}): "]
    lines[-1] += f"{reference:.1f} sentences/s"
    lines.append(f"repeated identical explanation request (cache hit, over HTTP): {fmt(repeat_ms, '.1f')} ms")
    if ratios:
        lines.append(
            f"throughput batching/no-batching at concurrency {ratios['max_concurrency']}: "
            f"{fmt(ratios['throughput_batching_over_no_batching'], suffix='x')}"
        )
        lines.append(
            f"p50 latency batching/no-batching at concurrency {ratios['min_concurrency']}: "
            f"{fmt(ratios['p50_batching_over_no_batching'], suffix='x')}"
        )
    write_results(Path(args.out or DEFAULT_OUT), "classify", data, "\n".join(lines))
    return 0


def _in_process_throughput(model_dir: str, sentences: list[str], batches: int) -> float:
    """Sentences/s of padded forward passes in this process: what HTTP serving could at best reach."""
    from shared.runtime.loading import load_text_model
    from shared.settings import Settings

    model = load_text_model(Settings(model_dir=model_dir, serverless=True))
    encoded = model.encode(sentences[: REFERENCE_BATCH * batches])
    chunks = [
        [e.ids for e in encoded[i : i + REFERENCE_BATCH]] for i in range(0, len(encoded), REFERENCE_BATCH)
    ]
    model.forward(chunks[0])  # warm up
    _, seconds = timed(lambda: [model.forward(rows) for rows in chunks])
    return len(encoded) / seconds


@contextmanager
def _service(args: argparse.Namespace, merging: str | None, cache: bool) -> Iterator[str]:
    """The URL to benchmark: --url as given, or a fresh `clarion serve` with concurrent
    classifications sharing passes (MICRO_BATCHING=true, "on") or each in passes of its own ("off").
    Throughput runs turn the cache off: the levels reuse the same sentences, and a cache hit runs no
    forward pass, so it would measure the cache instead of the batching."""
    if args.url:
        yield args.url.rstrip("/")
        return
    from tests.support import running_service, wait_healthy

    env = {"MODEL_DIR": args.model_dir, "SERVERLESS": "true", "ACCESS_LOG": "false"}
    env |= service_env(args.smoke)
    if not cache:
        env["EXPLANATION_CACHE_SIZE"] = "0"
    env["MICRO_BATCHING"] = "false" if merging == "off" else "true"
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp, running_service(Path(tmp), env) as svc:
        wait_healthy(svc, timeout=300)
        yield svc.url


def _repeated_explanation_ms(url: str, sentence: str, max_evals: int | None = None) -> float:
    """Milliseconds for an explanation request identical to one just answered (median of 5); at the
    service's default max_evals unless given."""
    import requests

    body: dict[str, Any] = {"data": sentence, "explain": True}
    if max_evals is not None:
        body["max_evals"] = max_evals
    with requests.Session() as session:
        session.post(url + "/invocations", json=body, timeout=120).raise_for_status()
        times = []
        for _ in range(5):
            started = time.perf_counter()
            session.post(url + "/invocations", json=body, timeout=120).raise_for_status()
            times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def _warm_up(url: str, sentences: list[str]) -> None:
    import requests

    with requests.Session() as session:
        for sentence in sentences[:5]:
            session.post(url + "/invocations", json={"data": sentence}, timeout=60).raise_for_status()


def _load(url: str, sentences: list[str], concurrency: int, total: int, cap_s: float) -> dict[str, Any]:
    """`concurrency` keep-alive clients post sentences round-robin until `total` requests or `cap_s`."""
    import requests

    lock = threading.Lock()
    next_index = iter(range(total))
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.perf_counter() + cap_s

    def client() -> None:
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    response = session.post(
                        url + "/invocations", json={"data": sentences[i % len(sentences)]}, timeout=120
                    )
                    ok = response.status_code == 200
                    detail = f"HTTP {response.status_code}"
                except requests.RequestException as exc:
                    ok, detail = False, type(exc).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors.append(detail)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "wall_s": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1000) if latencies else None,
        "p99_ms": float(np.percentile(lat, 99) * 1000) if latencies else None,
    }


def _ratios(runs: list[dict[str, Any]], levels: list[int]) -> dict[str, Any]:
    by = {(r["mode"], r["concurrency"]): r for r in runs}
    if not any(mode == "no-batching" for mode, _ in by):
        return {}
    high, low = max(levels), min(levels)
    return {
        "max_concurrency": high,
        "min_concurrency": low,
        "throughput_batching_over_no_batching": ratio(
            by[("batching", high)]["requests_per_s"], by[("no-batching", high)]["requests_per_s"]
        ),
        "p50_batching_over_no_batching": ratio(
            by[("batching", low)]["p50_ms"], by[("no-batching", low)]["p50_ms"]
        ),
    }


HEADERS = ["mode", "merged", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms"]


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        r["mode"],
        str(r["micro_batching"] if r["micro_batching"] is not None else "-"),
        str(r["concurrency"]),
        str(r["requests"]),
        str(r["errors"]),
        fmt(r["requests_per_s"], ".1f"),
        fmt(r["p50_ms"], ".1f"),
        fmt(r["p99_ms"], ".1f"),
    ]


def _row_line(run: dict[str, Any]) -> str:
    return " | ".join(f"{h} {c}" for h, c in zip(HEADERS, _cells(run), strict=True))


def _table(runs: list[dict[str, Any]]) -> str:
    return table(HEADERS, [_cells(r) for r in runs])
