"""Explanation jobs: the record of every issued job id, and the inline (single-process) job runner.

A job explains texts whose classification the API already returned. Its status goes
`queued -> running -> succeeded | failed`, or to `cancelled` from either of the first two. The API
records a job before it publishes it and afterwards only reads it; the worker that runs the job is
the only writer of its state and result (worker/tasks.py). A finished job never changes again
(the store's compare-and-set), so a late redelivery cannot complete it twice. The Celery-backed
queue lives in worker/queue.py; both keep a `JobRecord` per issued id, so an unknown id is a 404 and
never "pending forever".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from shared.cache import MemoryCache
from shared.errors import NotFound
from shared.kinds import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED  # noqa: F401 - re-exported
from shared.results import Classification, ErrorDetail, Explanation, JobBody, text_response
from shared.schemas import ExplainOptions

# The record format. Records live 24 h in Redis, across upgrades: a reader takes any version,
# ignores fields it does not know, and fills the ones an older writer did not write.
RECORD_VERSION = 2
_JOB_ID = re.compile(r"[0-9a-f]{32}")


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z; naive datetimes (Celery's date_done) are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    return iso_utc(datetime.now(UTC))


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class JobRecord:
    """What the API knows about a job from the moment it accepts it."""

    id: str
    submitted_at: str
    model: str
    single: bool
    texts: list[str]
    options: dict[str, Any]
    predictions: list[dict[str, Any]]
    status: str = QUEUED
    started_at: str | None = None
    finished_at: str | None = None
    explanations: list[dict[str, Any]] | None = None
    error: dict[str, str] | None = None
    owner: str | None = None  # digest of the API key that submitted it (None without API keys)
    version: int = RECORD_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> JobRecord:
        data = json.loads(raw)
        data.setdefault("version", 1)  # version 1 wrote no version (and had an `extra` field)
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})

    def public(self) -> JobBody:
        """The job as the API shows it."""
        classifications = [Classification.model_validate(p) for p in self.predictions]
        fields: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            **({"started_at": self.started_at} if self.started_at else {}),
            "prediction": _shape(self.single, [c.prediction for c in classifications]),
        }
        if self.status == SUCCEEDED and self.explanations and len(self.explanations) == len(classifications):
            items = [
                text_response(c, Explanation.model_validate(e), self.model)
                for c, e in zip(classifications, self.explanations, strict=True)
            ]
            fields["result"] = _shape(self.single, items)
        if self.error is not None:
            fields["error"] = ErrorDetail.model_validate(self.error)
        return JobBody(**fields)


def _shape(single: bool, items: list[Any]) -> Any:
    return items[0] if single else items


def new_record(
    model: str,
    texts: list[str],
    single: bool,
    options: ExplainOptions,
    predictions: list[Classification],
    owner: str | None = None,
) -> JobRecord:
    return JobRecord(
        id=new_job_id(),
        submitted_at=utc_now(),
        model=model,
        single=single,
        texts=texts,
        options=options.model_dump(),
        predictions=[p.model_dump(mode="json") for p in predictions],
        owner=owner,
    )


class JobQueue(Protocol):
    """What the API needs from a job backend."""

    asynchronous: bool

    def submit(self, record: JobRecord) -> JobRecord: ...

    def get(self, job_id: str) -> JobRecord: ...

    def delete(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job (its record, now cancelled, is returned), or remove a
        finished one, record and result (None: the job is gone, and its id a 404 from now on)."""
        ...

    def pending(self) -> int | None: ...


class FolderJobRecords:
    """Inline jobs' records as files in one folder, so every gunicorn worker of a server reads the
    jobs any of them ran (a GET lands on whichever worker accepts it). Writes are atomic (a
    rename); records older than `ttl_s` are removed as new ones are written."""

    def __init__(self, folder: str, ttl_s: int) -> None:
        self._folder = Path(folder)
        self._folder.mkdir(parents=True, exist_ok=True)
        self._ttl_s = ttl_s
        self._next_sweep = 0.0

    def get(self, job_id: str) -> JobRecord | None:
        if not _JOB_ID.fullmatch(job_id):
            return None  # never a path outside the folder
        try:
            return JobRecord.from_json((self._folder / f"{job_id}.json").read_bytes())
        except FileNotFoundError:
            return None

    def delete(self, job_id: str) -> None:
        if _JOB_ID.fullmatch(job_id):
            (self._folder / f"{job_id}.json").unlink(missing_ok=True)

    def put(self, job_id: str, record: JobRecord) -> None:
        target = self._folder / f"{job_id}.json"
        partial = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_text(record.to_json(), encoding="utf-8")
        os.replace(partial, target)
        self._sweep()

    def _sweep(self) -> None:
        now = time.time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        for path in self._folder.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > self._ttl_s:
                    path.unlink()


class InlineJobQueue:
    """Single-process mode: a job runs to completion inside `submit`; recent jobs stay readable
    from every worker of the server when `records` is a FolderJobRecords (what `clarion serve`
    sets up), else from this process only."""

    asynchronous = False

    def __init__(self, explain: Any, records: Any = None, capacity: int = 1024) -> None:
        self._explain = explain  # callable(texts, options) -> list[Explanation]
        self._records = records if records is not None else MemoryCache(capacity)

    def pending(self) -> int | None:
        return 0  # inline jobs run within their request: none ever waits

    def submit(self, record: JobRecord) -> JobRecord:
        # Validated against the operator's limits when the request was decoded; not again here.
        options = ExplainOptions.model_construct(**record.options)
        record.started_at = utc_now()
        explanations = self._explain(record.texts, options)
        record.explanations = [e.model_dump(mode="json") for e in explanations]
        record.status = SUCCEEDED
        record.finished_at = utc_now()
        self._records.put(record.id, record)
        return record

    def get(self, job_id: str) -> JobRecord:
        record = self._records.get(job_id)
        if record is None:
            raise NotFound(f"no explanation job {job_id!r}")
        return record

    def delete(self, job_id: str) -> JobRecord | None:
        self.get(job_id)  # a 404 for an unknown id
        self._records.delete(job_id)  # inline jobs are finished before their id is known: removed
        return None
