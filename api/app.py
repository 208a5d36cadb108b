"""The Flask app factory: the one place the HTTP app is built."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from flask import Flask

from api import analyses
from api.context import attach
from api.errors import register_error_handlers
from api.kserve import CONVERTERS, v1, v2
from api.operations import check_declared
from api.routes import bp
from shared.dataplane import DataPlane
from shared.jobs.analysis import Analyses, FolderAnalysisStore, InlineAnalyses
from shared.jobs.inline import FolderJobs, FolderKeys, InlineJobQueue, JobQueue
from shared.serving.service import ClarionService
from shared.settings import Settings


def create_app(
    settings: Settings,
    service: ClarionService | None = None,
    jobs: JobQueue | None = None,
    load_model: bool = True,
) -> Flask:
    """Build the app from the settings its process built. The model loads in a background thread so
    /ping can say 503 meanwhile."""
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = service or ClarionService(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.request_bytes_limit
    app.json.sort_keys = False  # keep the seed's field order: prediction, then explanation
    plane = DataPlane(
        settings=settings,
        service=service,
        jobs=jobs or _job_queue(settings, service),
        analyses=_analyses(settings, service),
    )
    attach(app, plane)
    if settings.jobs_are_async and jobs is None:
        from api.queue import Sweeper  # only when a broker is configured

        Sweeper.for_settings(settings, [plane.jobs, plane.analyses]).start()
    app.url_map.converters.update(CONVERTERS)  # before the routes that use them
    app.register_blueprint(bp)
    app.register_blueprint(analyses.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v2.bp)
    register_error_handlers(app)
    check_declared(app)  # a route without its OpenAPI operation stops the app here
    if load_model:
        service.start_loading()
    return app


def _analyses(settings: Settings, service: ClarionService) -> Analyses:
    """Where analyses run: chunk tasks on the workers, or within the request in single-process mode
    (their files kept beside the inline jobs', so every HTTP process of the server reads them)."""
    if settings.jobs_are_async:
        from api.queue import CeleryAnalyses

        return CeleryAnalyses(settings)
    folder = Path(settings.inline_jobs_dir or tempfile.mkdtemp(prefix="clarion-jobs-")) / "analyses"
    return InlineAnalyses(FolderAnalysisStore(folder, settings.job_result_ttl_s), service)


def _job_queue(settings: Settings, service: ClarionService) -> JobQueue:
    if not settings.jobs_are_async:
        folder = settings.inline_jobs_dir
        if folder is None:
            return InlineJobQueue(service.explain)
        stored = FolderJobs(folder, settings.job_result_ttl_s)
        return InlineJobQueue(
            service.explain, stored, FolderKeys(Path(folder) / "keys", settings.job_result_ttl_s)
        )
    from api.queue import CeleryJobQueue  # only when a broker is configured

    return CeleryJobQueue(settings)
