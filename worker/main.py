"""The worker process's Celery app (`celery -A worker.main:celery_app worker`, which `clarion worker`
runs): its settings are read from the environment here, once, and the app carries them to the tasks."""

from __future__ import annotations

from shared.settings import load_settings
from worker.app import create_celery_app

celery_app = create_celery_app(load_settings())
celery_app.conf.include = ["worker.tasks"]
