"""The workers' Celery app, built from the Settings object its process was given and the
configuration the API publishes with (shared/jobs/broker.py).

The worker process builds it once in `worker/main.py`. Celery keeps no results: each job's state and
result live in the job store, written by the worker that runs it (shared/jobs/job.py).
"""

from __future__ import annotations

from celery import Celery

from shared.jobs.broker import APP_NAME, celery_config
from shared.settings import Settings


def create_celery_app(settings: Settings) -> Celery:
    app = Celery(APP_NAME)
    app.conf.update(celery_config(settings))
    app.clarion_settings = settings  # type: ignore[attr-defined]
    return app
