"""The API's Celery app: it only publishes tasks by name and revokes them, never runs one, so it
knows nothing of worker/ (the names and the configuration both sides use are shared/jobs/broker.py)."""

from __future__ import annotations

from celery import Celery

from shared.jobs.broker import APP_NAME, celery_config
from shared.settings import Settings


def publisher(settings: Settings) -> Celery:
    """A Celery app configured as the workers' is, to publish to the queue they take from."""
    app = Celery(APP_NAME)
    app.conf.update(celery_config(settings))
    return app
