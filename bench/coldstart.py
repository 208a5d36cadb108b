"""`python -m bench coldstart`: seconds from process start to a healthy /ping, and the service's peak RSS."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_OUT, MINILM_DIR, environment, fmt, median, table, write_results

POLL_S = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model-dir", default=str(MINILM_DIR))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for /ping per run")


def main(args: argparse.Namespace) -> int:
    if args.smoke:
        args.runs = 1
    runs = []
    for i in range(args.runs):
        runs.append(_one_run(args.model_dir, args.timeout))
        print(
            f"run {i + 1}: " + " | ".join(f"{h} {c}" for h, c in zip(HEADERS, _cells(runs[-1]), strict=True))
        )
    summary = {key: median([r[key] for r in runs]) for key in ("ready_s", "first_request_s", "peak_rss_mib")}
    summary["max_peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    data = {
        "config": {"runs": args.runs, "model_dir": args.model_dir, "smoke": args.smoke},
        "environment": environment(),
        "runs": runs,
        "summary": summary,
    }
    last = (
        f"coldstart (median of {len(runs)}): ready {fmt(summary['ready_s'], suffix='s')} "
        f"first request {fmt(summary['first_request_s'], '.3f', 's')} "
        f"peak RSS {fmt(summary['peak_rss_mib'], '.0f', ' MiB')} (max {summary['max_peak_rss_mib']:.0f} MiB)"
    )
    text = table(HEADERS, [_cells(r) for r in runs]) + "\n\n" + last
    write_results(Path(args.out or DEFAULT_OUT), "coldstart", data, text)
    return 0


def _one_run(model_dir: str, timeout: float) -> dict[str, Any]:

    from tests.support import running_service

    env = {"MODEL_DIR": model_dir, "SERVERLESS": "true"}
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        started = time.perf_counter()
        with running_service(Path(tmp), env) as svc:
            ready_s = _wait_ping(svc, started, timeout)
            response, first_s = _first_request(svc.url)
            group = _process_group(svc.process.pid)
            rss = {pid: _status_kib(pid, "VmHWM") for pid in group}
            current = sum(_status_kib(pid, "VmRSS") or 0 for pid in group)
    if response != 200:
        raise RuntimeError(f"first request answered HTTP {response}")
    return {
        "ready_s": ready_s,
        "first_request_s": first_s,
        "processes": len(group),
        "peak_rss_mib": sum(v or 0 for v in rss.values()) / 1024,
        "rss_after_first_request_mib": current / 1024,
        "peak_rss_by_pid_mib": {str(pid): (v or 0) / 1024 for pid, v in rss.items()},
    }


def _wait_ping(svc: Any, started: float, timeout: float) -> float:
    """Poll /ping every 50 ms; seconds from before the process was started to the first 200."""
    import requests

    while time.perf_counter() - started < timeout:
        if svc.process.poll() is not None:
            raise RuntimeError(f"service exited with {svc.process.returncode}:\n{svc.log()[-3000:]}")
        try:
            if requests.get(svc.url + "/ping", timeout=1).status_code == 200:
                return time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(POLL_S)
    raise TimeoutError(f"/ping not healthy after {timeout:.0f}s:\n{svc.log()[-3000:]}")


def _first_request(url: str) -> tuple[int, float]:
    import requests

    started = time.perf_counter()
    response = requests.post(url + "/invocations", json={"data": "a gorgeous, witty film ."}, timeout=120)
    return response.status_code, time.perf_counter() - started


def _process_group(pgid: int) -> list[int]:
    """Every live process in process group `pgid` (the service runs in its own session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp
            pids.append(int(stat.parent.name))
    return sorted(pids)


def _status_kib(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak resident set; VmRSS: current)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


HEADERS = ["ready s", "first request s", "processes", "peak RSS MiB", "RSS now MiB"]


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        fmt(r["ready_s"]),
        fmt(r["first_request_s"], ".3f"),
        str(r["processes"]),
        fmt(r["peak_rss_mib"], ".0f"),
        fmt(r["rss_after_first_request_mib"], ".0f"),
    ]
