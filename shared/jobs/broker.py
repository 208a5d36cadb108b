"""What the API and the workers agree on about the broker: the tasks' names, the queue, and the
Celery configuration both build their app from, as plain settings. No Celery here: the API builds a
publish-only app from it (api/broker.py), the workers the app that runs the tasks (worker/app.py),
so the two sides cannot disagree about the broker, the serializer or the queue."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings

APP_NAME = "clarion"
EXPLAIN_TASK = "clarion.explain"  # the task a job runs, published by name (worker/tasks.py defines it)
ANALYZE_TASK = "clarion.analyze_chunk"  # one chunk of a dataset analysis (shared/jobs/analysis.py)
QUEUE = "celery"  # Celery's default queue: a Redis list of the jobs no worker has taken yet


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings (its lowercase names) for a deployment with `settings`. The worker-side ones
    are read by workers only; a publish-only app carries them unread."""
    restore_every = max(1, min(10, settings.visibility_timeout_s // 2))
    return {
        "broker_url": settings.broker_url,
        # JSON only: a pickle payload from a compromised broker would be code execution.
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        # A job whose worker dies is redelivered: ack only after it finished, requeue on worker loss.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A worker reserves no task beyond the ones it runs, so every waiting job stays in the
        # queue's Redis list, which is what KEDA's scaler counts (and another worker may take it).
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": settings.redis_broker_url is not None,
        "task_ignore_result": True,
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "task_time_limit": settings.job_time_limit_s,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 1,
        },
        "redis_socket_connect_timeout": 1,
        "redis_socket_timeout": 5,
        # A new pool process loads and warms the model before it reports UP; the default 4 s is
        # shorter than that on a busy machine, and the pool would kill and respawn it forever.
        "worker_proc_alive_timeout": 300,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }
