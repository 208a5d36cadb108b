"""gunicorn settings, derived from Clarion's settings object (never from a second source)."""

import os

from shared.settings import load_settings

_settings = load_settings()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.worker_count
# Threads let one worker hold many connections; every forward pass of the process runs on its one
# engine thread (shared/engine.py), so request threads do not oversubscribe the cores.
worker_class = "gthread"
threads = _settings.http_threads
# For gthread workers this is only a heartbeat, not a request limit (the engine thread keeps the
# worker's heartbeat going); requests stop at SAGEMAKER_MODEL_SERVER_TIMEOUT through their deadline.
timeout = _settings.timeout_s
graceful_timeout = 30
keepalive = 5
# Never preload: torch run in a parent and then forked deadlocks its thread pool in the children.
preload_app = False
# gunicorn >= 25 creates a control socket under ~/.gunicorn by default; Clarion does not use it.
control_socket_disable = True
accesslog = "-" if _settings.access_log else None
# gunicorn's default line, then the request id every response carries (api/routes.py).
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" id=%({x-request-id}o)s'
errorlog = "-"
loglevel = _settings.log_level.lower()
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
limit_request_line = 8190


def child_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """A gunicorn worker exited: its live gauges stop counting in /metrics."""
    from shared.metrics import process_died

    process_died(worker.pid)
