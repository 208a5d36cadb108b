"""The parts the app factory builds for its views: one typed object, stored on the app once by
`create_app` (api/app.py), and the one accessor views call to reach it. It lives beside the factory,
not in it, because the factory imports the views: they import this module, which imports none of
them. Nothing else under api/ touches Flask's `app.extensions`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from shared.jobs.analysis import Analyses
from shared.jobs.inline import JobQueue
from shared.serving.service import ClarionService
from shared.settings import Settings

_KEY = "clarion"


@dataclass(frozen=True)
class AppParts:
    """What a view may use: the settings the process was given, the service that classifies and
    explains, and where jobs and analyses run (the workers, or this process)."""

    settings: Settings
    service: ClarionService
    jobs: JobQueue
    analyses: Analyses


def attach(app: Flask, parts: AppParts) -> None:
    """The factory's one write: `app`'s views use these parts from now on."""
    app.extensions[_KEY] = parts


def app_parts() -> AppParts:
    """The parts of the app serving this request (or this app context)."""
    return current_app.extensions[_KEY]
