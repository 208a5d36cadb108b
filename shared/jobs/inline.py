"""Jobs without a broker: run inline, within their request; stored where every gunicorn
worker of the server reads them."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from shared.errors import NotFound
from shared.io.inputs import Input, restored
from shared.io.results import Explanation
from shared.io.schemas import ExplainOptions
from shared.jobs.job import _JOB_ID, Idempotency, StoredJob, progress_of, replayed, utc_now
from shared.kinds import SUCCEEDED
from shared.runtime.engine import Ticket
from shared.storage.memory import MemoryCache

# ClarionService.explain: texts and options, within a ticket, to their explanations
Explain = Callable[[Sequence[Input], ExplainOptions, Ticket | None], list[Explanation]]


class JobQueue(Protocol):
    """What the API needs from a job backend."""

    asynchronous: bool

    def submit(
        self, job: StoredJob, ticket: Ticket | None = None, idempotency: Idempotency | None = None
    ) -> tuple[StoredJob, bool]:
        """Accept a job (an inline queue runs it now, within `ticket`, the request's deadline), or
        find the one its Idempotency-Key made before; and whether it was made before."""
        ...

    def get(self, job_id: str) -> StoredJob: ...

    def delete(self, job_id: str) -> StoredJob | None:
        """Cancel a queued or running job (returned as stored, now cancelled), or remove a
        finished one with its result (None: the job is gone, and its id a 404 from now on)."""
        ...

    def pending(self) -> int | None: ...


class FolderJobs:
    """Inline jobs stored as files in one folder, so every gunicorn worker of a server reads the
    jobs any of them ran (a GET lands on whichever worker accepts it). Writes are atomic (a
    rename); jobs older than `ttl_s` are removed as new ones are written."""

    def __init__(self, folder: str, ttl_s: int) -> None:
        self._folder = Path(folder)
        self._folder.mkdir(parents=True, exist_ok=True)
        self._ttl_s = ttl_s
        self._next_sweep = 0.0

    def get(self, job_id: str) -> StoredJob | None:
        if not _JOB_ID.fullmatch(job_id):
            return None  # never a path outside the folder
        try:
            return StoredJob.from_json((self._folder / f"{job_id}.json").read_bytes())
        except FileNotFoundError:
            return None

    def delete(self, job_id: str) -> None:
        if _JOB_ID.fullmatch(job_id):
            (self._folder / f"{job_id}.json").unlink(missing_ok=True)

    def put(self, job_id: str, job: StoredJob) -> None:
        target = self._folder / f"{job_id}.json"
        partial = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_text(job.to_json(), encoding="utf-8")
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


class FolderKeys:
    """Idempotency keys of inline jobs as files (every gunicorn worker of the server reads them):
    the first request to finish with a key holds it. Keys expire with their jobs (`ttl_s`)."""

    def __init__(self, folder: str | Path, ttl_s: int) -> None:
        self._folder = Path(folder)
        self._folder.mkdir(parents=True, exist_ok=True)
        self._ttl_s = ttl_s

    def get(self, name: str) -> dict[str, str] | None:
        try:
            return json.loads((self._folder / name).read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def delete(self, name: str) -> None:
        (self._folder / name).unlink(missing_ok=True)

    def put(self, name: str, value: dict[str, str]) -> None:
        """Hold the key for `value`, unless a request holds it already. Written whole, then linked
        into place: no reader sees half a file."""
        partial = self._folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        partial.write_text(json.dumps(value), encoding="utf-8")
        try:
            os.link(partial, self._folder / name)
        except FileExistsError:
            pass
        finally:
            partial.unlink(missing_ok=True)
        now = time.time()
        for path in self._folder.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > self._ttl_s:
                    path.unlink()


class InlineJobQueue:
    """Single-process mode: a job runs to completion inside `submit`; recent jobs stay readable
    from every worker of the server when `jobs` is a FolderJobs (what `clarion serve`
    sets up), else from this process only."""

    asynchronous = False

    def __init__(self, explain: Explain, jobs: Any = None, keys: Any = None, capacity: int = 1024) -> None:
        self._explain = explain
        self._jobs = jobs if jobs is not None else MemoryCache(capacity)
        self._keys = keys if keys is not None else MemoryCache(capacity)

    def pending(self) -> int | None:
        return 0  # inline jobs run within their request: none ever waits

    def submit(
        self, job: StoredJob, ticket: Ticket | None = None, idempotency: Idempotency | None = None
    ) -> tuple[StoredJob, bool]:
        if idempotency is not None:
            made = replayed(self._keys.get(idempotency.key_name), idempotency, self._jobs.get)
            if made is not None:
                return made, True
        # Validated against the operator's limits when the request was decoded; not again here.
        options = ExplainOptions.model_construct(**job.options)
        job.started_at = utc_now()
        ticket = ticket or Ticket()
        explanations = self._explain([restored(text) for text in job.texts], options, ticket)
        job.progress = progress_of(*ticket.progress) if ticket.progress else None
        job.explanations = [e.model_dump(mode="json") for e in explanations]
        job.status = SUCCEEDED
        job.finished_at = utc_now()
        if idempotency is not None:
            job.idempotency_key = idempotency.key_name
        self._jobs.put(job.id, job)
        if idempotency is not None:
            self._keys.put(idempotency.key_name, {"id": job.id, "request": idempotency.request})
        return job, False

    def get(self, job_id: str) -> StoredJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no explanation job {job_id!r}")
        return job

    def delete(self, job_id: str) -> StoredJob | None:
        job = self.get(job_id)  # a 404 for an unknown id
        self._jobs.delete(job_id)  # inline jobs are finished before their id is known: removed
        if job.idempotency_key:  # the key goes with its job
            self._keys.delete(job.idempotency_key)
        return None
