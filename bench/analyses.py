"""`python -m bench analyses`: a dataset analysis (POST /analyses) on 1 worker and on 2: throughput
and the peak memory of every process, while the records stream through chunks."""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    ratio,
    rss_by_process,
    service_env,
    sst2_sentences,
    table,
    write_results,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texts", type=int, default=2000, help="SST-2 dev sentences, cycled (872 distinct)")
    parser.add_argument("--workers", default="1,2", help="comma list of worker processes to compare")
    parser.add_argument("--max-evals", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=32, help="ANALYSIS_CHUNK_TEXTS")
    parser.add_argument("--faithfulness", action="store_true", help="also measure faithfulness")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))


class PeakMemory:
    """Samples the RSS of process groups every 0.2 s (each process with its children: a worker's
    pool, gunicorn's workers); keeps each group's peak (MiB)."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups  # name -> process group id
        self.peaks = dict.fromkeys(groups, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        for name, group in self.groups.items():
            self.peaks[name] = max(self.peaks[name], sum(rss_by_process([group]).values()))


def main(args: argparse.Namespace) -> int:
    from tests.support import RedisServer, Worker, running_service, wait_healthy, wait_until

    if args.smoke:
        args.texts, args.workers, args.max_evals, args.chunk = 12, "1", 16, 4
    sentences = sst2_sentences()
    texts = [sentences[i % len(sentences)] for i in range(args.texts)]
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    counts = [int(c) for c in args.workers.split(",") if c.strip()]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            for count in counts:
                env = {
                    "MODEL_DIR": args.model_dir,
                    "REDIS_URL": redis.url,
                    "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                    "WORKER_CONCURRENCY": "1",
                    "TORCH_THREADS": "1",  # each worker one core: the comparison is of workers
                    "ACCESS_LOG": "false",
                    "EXPLANATION_CACHE_SIZE": "0",  # cycled sentences must be explained again
                    "ANALYSIS_CHUNK_TEXTS": str(args.chunk),
                    "ANALYSIS_MAX_TEXTS": str(max(args.texts, 100_000)),
                    **service_env(args.smoke),
                }
                workers = [Worker(Path(tmp), env) for _ in range(count)]
                try:
                    with running_service(Path(tmp), env) as api:
                        wait_healthy(api, timeout=300)
                        for worker in workers:
                            wait_until(lambda w=worker: "loaded from" in w.log(), 300, what="a worker")
                        groups = {
                            "api": api.process.pid,
                            **{f"worker {i + 1}": w.process.pid for i, w in enumerate(workers)},
                        }
                        with PeakMemory(groups) as memory:
                            started = time.perf_counter()
                            analysis = _analyse(api, body, args)
                            elapsed = time.perf_counter() - started
                finally:
                    for worker in workers:
                        worker.stop()
                run = {
                    "workers": count,
                    "texts": args.texts,
                    "seconds": elapsed,
                    "texts_per_second": args.texts / elapsed,
                    "peak_rss_mib": memory.peaks,
                    "analysed": analysis["analysis"]["clarion"]["texts"],
                }
                runs.append(run)
                print(
                    f"{count} worker(s): {args.texts} texts in {elapsed:.1f}s; peak RSS {memory.peaks}",
                    flush=True,
                )
        finally:
            redis.stop()

    base = runs[0]["texts_per_second"]
    headers = ["workers", "texts", "seconds", "texts/s", "vs 1 worker", "peak RSS MiB (API; each worker)"]
    rows = [
        [
            str(r["workers"]),
            str(r["texts"]),
            fmt(r["seconds"], ".1f"),
            fmt(r["texts_per_second"], ".2f"),
            fmt(ratio(r["texts_per_second"], base), ".2f", "x"),
            ", ".join(f"{v:.0f}" for v in r["peak_rss_mib"].values()),
        ]
        for r in runs
    ]
    text = table(headers, rows) + (
        f"\n\nPOST /analyses of {args.texts} SST-2 dev sentences (cycled), word granularity, max_evals "
        f"{args.max_evals}, chunks of {args.chunk}, faithfulness {'on' if args.faithfulness else 'off'}; "
        "each worker one process with one torch thread"
    )
    data = {"config": vars(args), "environment": environment(), "runs": runs}
    write_results(Path(args.out or DEFAULT_OUT), "analyses", data, text)
    print(text)
    return 0


def _analyse(api: Any, body: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Submit the analysis and poll until it succeeded."""
    import requests

    query = {"max_evals": str(args.max_evals), "faithfulness": str(args.faithfulness).lower()}
    response = requests.post(
        f"{api.url}/analyses",
        data=body,
        headers={"Content-Type": "application/jsonlines"},
        params=query,
        timeout=600,
    )
    response.raise_for_status()
    location = f"{api.url}{response.headers['Location']}"
    while True:
        analysis = requests.get(location, timeout=60).json()
        if analysis["status"] == "succeeded":
            return analysis
        if analysis["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"analysis {analysis['status']}: {analysis.get('error')}")
        time.sleep(0.5)
