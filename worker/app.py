"""The Celery app, built from the Settings object its process was given.

The worker process builds it once in `worker/main.py`; the API builds its own from the settings given
to `create_app`, and only publishes to it, by task name. Celery keeps no results: each job's state and
result live in the job store, written by the worker that runs it (shared/jobs/record.py).
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings

EXPLAIN_TASK = "clarion.explain"  # the task a job runs, published by name (worker/tasks.py defines it)
ANALYZE_TASK = "clarion.analyze_chunk"  # one chunk of a dataset analysis (shared/jobs/analysis.py)
QUEUE = "celery"  # Celery's default queue: a Redis list of the jobs no worker has taken yet


def create_celery_app(settings: Settings) -> Celery:
    app = Celery("clarion", broker=settings.broker_url)
    restore_every = max(1, min(10, settings.visibility_timeout_s // 2))
    app.conf.update(
        # JSON only: a pickle payload from a compromised broker would be code execution.
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        # A job whose worker dies is redelivered: ack only after it finished, requeue on worker loss.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A worker reserves no task beyond the ones it runs, so every waiting job stays in the
        # queue's Redis list, which is what KEDA's scaler counts (and another worker may take it).
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=settings.redis_broker_url is not None,
        task_ignore_result=True,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_time_limit_s,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": restore_every,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 1,
        },
        redis_socket_connect_timeout=1,
        redis_socket_timeout=5,
        # A new pool process loads and warms the model before it reports UP; the default 4 s is
        # shorter than that on a busy machine, and the pool would kill and respawn it forever.
        worker_proc_alive_timeout=300,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.clarion_settings = settings  # type: ignore[attr-defined]
    return app
