"""gunicorn, run inside `clarion serve` from the Settings that process built: its configuration, and
the app each worker process builds after the fork (from the same settings, never re-read)."""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

from shared.settings import Settings

# gunicorn's default line, then the request id every response carries (api/routes.py) and the HTTP
# process that answered.
ACCESS_LOG_FORMAT = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" id=%({x-request-id}o)s pid=%(p)s'
)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn's settings, derived from Clarion's (never from a second source)."""
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.http_processes,
        # Threads let one worker hold many connections; every forward pass of the process runs on its
        # one engine thread (shared/runtime/engine.py), so request threads do not oversubscribe the cores.
        "worker_class": "gthread",
        "threads": settings.http_threads,
        # For gthread workers this is only a heartbeat, not a request limit (the engine thread keeps
        # the worker's heartbeat going); requests stop at SAGEMAKER_MODEL_SERVER_TIMEOUT through
        # their deadline.
        "timeout": settings.timeout_s,
        "graceful_timeout": 30,
        "keepalive": 5,
        # Never preload: torch run in a parent and then forked deadlocks its thread pool in the children.
        "preload_app": False,
        # gunicorn >= 25 creates a control socket under ~/.gunicorn by default; Clarion does not use it.
        "control_socket_disable": True,
        "accesslog": "-" if settings.access_log else None,
        "access_log_format": ACCESS_LOG_FORMAT,
        "errorlog": "-",
        "loglevel": settings.log_level.lower(),
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        "limit_request_line": 8190,
        "child_exit": _child_exit,
    }


def _child_exit(server: Any, worker: Any) -> None:
    """A gunicorn worker exited: its live gauges stop counting in /metrics."""
    from shared.metrics import process_died

    process_died(worker.pid)


class Server(BaseApplication):
    """gunicorn's master in this process; each worker builds the Flask app from `settings`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for name, value in gunicorn_options(self.settings).items():
            if value is not None:
                self.cfg.set(name, value)

    def load(self) -> Any:
        from api.app import create_app

        return create_app(self.settings)
