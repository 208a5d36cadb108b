"""Command line: `clarion serve` (gunicorn API), `clarion worker` (Celery), `clarion explain` (a file
of texts, shared/cli/explain.py), `clarion analyze` and `clarion compare` (a dataset's explanation
and its drift, shared/cli/analyze.py), `serve` (SageMaker).

Settings are validated and the model is fetched here, in the parent, so that a wrong setting or an
unreachable bucket stops start-up with one clear line. No torch work happens before the fork.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys

from shared.errors import ClarionError
from shared.runtime.source import resolve_model
from shared.settings import Settings, load_settings


def _prepare(settings: Settings, threads: int) -> None:
    location = resolve_model(settings)
    print(f"clarion: model {location.model_id} ({location.source})", file=sys.stderr, flush=True)
    # Each process runs `threads` torch threads; the native pools read these before torch starts.
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if location.source != "hub":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _metrics_folder(owner: str) -> None:
    """prometheus_client's multiprocess mode: every process of this server writes its samples to one
    folder (a fresh one, unless PROMETHEUS_MULTIPROC_DIR names one), read at scrape time. Set before
    any process imports prometheus_client."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"clarion-metrics-{owner}-")


def _serve(settings: Settings) -> None:
    _prepare(settings, settings.threads_per_http_process)
    _metrics_folder("api")
    if not settings.jobs_are_async and settings.inline_jobs_dir is None:
        # One folder per server, shared by its gunicorn workers, so a job run by one is found by all.
        import tempfile

        settings = dataclasses.replace(settings, inline_jobs_dir=tempfile.mkdtemp(prefix="clarion-jobs-"))
    mode = "single-process" if not settings.jobs_are_async else "async jobs via Celery"
    print(
        f"clarion: serving on {settings.host}:{settings.port}, {settings.http_processes} HTTP process(es) x "
        f"{settings.threads_per_http_process} torch thread(s), {mode}",
        file=sys.stderr,
        flush=True,
    )
    # gunicorn runs in this process (no second interpreter start: cold start matters on serverless),
    # with these settings: its workers build their apps from them after the fork. The command line
    # starts the API by name, as it starts the worker (`celery -A worker.main`): shared/ never depends
    # on either.
    importlib.import_module("api.server").Server(settings).run()


def _worker(settings: Settings) -> None:
    if settings.broker_url is None:
        raise ClarionError(
            "REDIS_URL (or CELERY_BROKER_URL): required to start a worker (and SERVERLESS must be false)"
        )
    _prepare(settings, settings.celery_threads_per_process)
    _metrics_folder("worker")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.main:celery_app",
        "worker",
        f"--loglevel={settings.log_level}",
        f"--concurrency={settings.celery_concurrency}",
        # prefork: one job per pool process, each with its own model. threads: several jobs in one
        # process, whose rounds share its engine's passes (time limits are then the engine's).
        f"--pool={settings.worker_pool}",
        "-O",
        "fair",
        "--without-gossip",
        "--without-mingle",
    ]
    os.execv(sys.executable, argv)


def _show_config(settings: Settings) -> None:
    derived = {
        "http_processes": settings.http_processes,
        "threads_per_http_process": settings.threads_per_http_process,
        "jobs_are_async": settings.jobs_are_async,
        "local_model_dir": str(settings.local_model_dir) if settings.local_model_dir else None,
    }
    shown = {**settings.__dict__, **derived, "api_keys": ["***"] * len(settings.api_keys)}
    for name in ("redis_url", "celery_broker_url", "celery_result_backend"):
        shown[name] = _without_password(shown[name])
    print(json.dumps(shown, indent=2, default=str))


def _without_password(url: str | None) -> str | None:
    """A URL fit to print: its password replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="clarion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the HTTP API (gunicorn) on 0.0.0.0:$PORT")
    sub.add_parser("worker", help="start a Celery worker for explanation jobs")
    sub.add_parser("config", help="print the effective settings and exit")
    from shared.cli import analyze, distill, explain

    explain.add_arguments(
        sub.add_parser("explain", help="explain a .txt, .jsonl or .csv file into JSON Lines (and HTML)")
    )
    analyze.add_arguments(
        sub.add_parser("analyze", help="a dataset's explanation: analysis.json, records.jsonl, report.html")
    )
    analyze.add_compare_arguments(
        sub.add_parser("compare", help="attribution drift between two analyses (exit 1 below the threshold)")
    )
    distill.add_arguments(
        sub.add_parser(
            "distill", help="train the amortized explainer for the served model on a file of texts"
        )
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":  # two files: no model, no settings
            sys.exit(analyze.compare_main(args))
        settings = load_settings()  # the one reading of the environment in this process
        if args.command == "explain":
            sys.exit(explain.main(args, settings))
        if args.command == "analyze":
            sys.exit(analyze.main(args, settings))
        if args.command == "distill":
            sys.exit(distill.main(args, settings))
        {"serve": _serve, "worker": _worker, "config": _show_config}[args.command](settings)
    except ClarionError as exc:
        print(f"clarion: {exc.message}", file=sys.stderr)
        sys.exit(2)


def serve_main() -> None:
    """`serve`: the command SageMaker runs (`docker run IMAGE serve`); extra arguments are ignored."""
    main(["serve"])


if __name__ == "__main__":
    main()
