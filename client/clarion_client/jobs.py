"""Explanation jobs and analyses as the client sees them: snapshots of their state, each as the
server last showed it (GET /explanations/<id>, GET /analyses/<id>)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

FINISHED = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Progress:
    """Work done out of the most there is: model evaluations for a job, texts for an analysis."""

    done: int
    total: int

    @classmethod
    def from_body(cls, body: Any) -> Progress | None:
        return cls(int(body["done"]), int(body["total"])) if isinstance(body, dict) else None


@dataclass(frozen=True)
class Tracked:
    """What jobs and analyses share: an id, a status that only moves forward, progress, an error."""

    collection: ClassVar[str]  # the route that holds them
    kind: ClassVar[str]  # what messages call them

    id: str
    status: str  # queued, running, succeeded, failed or cancelled
    submitted_at: str | None
    started_at: str | None
    finished_at: str | None
    progress: Progress | None
    error: dict[str, Any] | None  # when failed: {"code", "message"}
    body: dict[str, Any] = field(repr=False)  # the JSON as the server sent it

    @classmethod
    def path_of(cls, identifier: str) -> str:
        return f"{cls.collection}/{urllib.parse.quote(identifier, safe='')}"

    @property
    def path(self) -> str:
        return self.path_of(self.id)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_body(cls, body: dict[str, Any], **client_side: Any) -> Self:
        """The snapshot of a server's JSON; fields it does not know are kept in `body` only, fields
        it lacks are None. `client_side` fills the fields the server does not send."""
        shared = {
            "id": str(body["id"]),
            "status": str(body["status"]),
            "submitted_at": body.get("submitted_at"),
            "started_at": body.get("started_at"),
            "finished_at": body.get("finished_at"),
            "progress": Progress.from_body(body.get("progress")),
            "error": body.get("error"),
            "body": body,
        }
        own = {f.name: body.get(f.name) for f in fields(cls) if f.name not in shared and f.name in body}
        return cls(**shared, **own, **client_side)


@dataclass(frozen=True)
class Job(Tracked):
    """An explanation job (POST /explanations): `prediction` at once, `result` once succeeded."""

    collection: ClassVar[str] = "/explanations"
    kind: ClassVar[str] = "explanation job"

    prediction: Any = None  # as in the result: a list of {label, score}, or a list of those
    result: Any = None  # an /invocations answer with explain: a dict for one text, a list for a list
    attempts: int | None = None  # times a worker started it, when reported (more than 1: a worker was lost)
    # Client side: the texts submitted, when this client submitted the job (the server does not
    # send them back), so that shap_explanation(job.result, job.texts) shows them as sent.
    texts: str | list[str] | None = None


@dataclass(frozen=True)
class Analysis(Tracked):
    """A dataset analysis (POST /analyses): `analysis` (analysis.json) once succeeded."""

    collection: ClassVar[str] = "/analyses"
    kind: ClassVar[str] = "analysis"

    model: str | None = None
    lines: int | None = None  # lines read from the input
    texts: int | None = None  # lines explained (the others were refused, and are skipped)
    input: str | None = None  # the S3 object analyzed (None: the request body)
    output: str | None = None  # the S3 prefix the files went to
    analysis: dict[str, Any] | None = None
