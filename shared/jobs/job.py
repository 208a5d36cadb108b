"""A stored job: what the API knows of a job from the moment it accepts it, and the worker updates."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from shared.errors import IdempotencyConflict
from shared.io.inputs import Input, stored
from shared.io.results import Classification
from shared.io.schemas import ExplainOptions
from shared.kinds import QUEUED

# The stored format. Stored jobs and analyses live 24 h in Redis, across upgrades: a reader takes any version,
# ignores fields it does not know, and fills the ones an older writer did not write.
FORMAT_VERSION = 2
_JOB_ID = re.compile(r"[0-9a-f]{32}")


T = TypeVar("T", bound="Stored")


class Stored:
    """A dataclass stored as JSON across upgrades: a reader takes fields it knows and ignores the
    rest, and fields an older writer did not write take their defaults (or `UNWRITTEN`'s)."""

    UNWRITTEN: ClassVar[dict[str, Any]] = {}
    RENAMED: ClassVar[dict[str, str]] = {}  # an older writer's field name -> its name now

    def to_json(self) -> str:
        return json.dumps(asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], raw: str | bytes) -> T:
        written = json.loads(raw)
        data = {**cls.UNWRITTEN, **{cls.RENAMED.get(name, name): value for name, value in written.items()}}
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{name: value for name, value in data.items() if name in known})


@dataclass(frozen=True)
class Idempotency:
    """A submit's Idempotency-Key: the key, who sent it, and a digest of the request it came with
    (the same key with another request is refused)."""

    key: str
    owner: str | None
    request: str

    @property
    def key_name(self) -> str:
        """Names the key for its owner only: two API keys' clients may choose the same key."""
        import hashlib

        digest = hashlib.sha256(self.key.encode("utf-8", "surrogatepass")).hexdigest()
        return f"{self.owner or '-'}.{digest}"


def replayed(
    held: dict[str, str] | None, idempotency: Idempotency, load: Callable[[str], T | None]
) -> T | None:
    """The job or analysis an Idempotency-Key made before (None: the key is free: never used, or
    what it made is gone); the same key with another request is a 422."""
    if held is None:
        return None
    stored = load(held["id"])
    if stored is not None and held.get("request") != idempotency.request:
        raise IdempotencyConflict(
            f"the Idempotency-Key {idempotency.key!r} was used with another request; "
            "a new request needs a new key"
        )
    return stored


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a Z; naive datetimes (Celery's date_done) are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    return iso_utc(datetime.now(UTC))


def stamp_finished(stored: Any) -> None:
    """A move to a finished state: when it happened."""
    stored.finished_at = utc_now()


def progress_of(done: int, total: int) -> dict[str, int]:
    return {"done": done, "total": total}


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class StoredJob(Stored):
    """What the API knows about a job from the moment it accepts it."""

    id: str
    submitted_at: str
    model: str
    single: bool
    # Each input as shared.io.inputs.stored keeps it: a text, or a text pair's or a zero-shot text's object.
    texts: list[str | dict[str, Any]]
    options: dict[str, Any]
    predictions: list[dict[str, Any]]
    status: str = QUEUED
    started_at: str | None = None
    finished_at: str | None = None
    explanations: list[dict[str, Any]] | None = None
    error: dict[str, str] | None = None
    # {"done": n, "total": m}: documents evaluated out of the most the job may take; the worker
    # writes it as the job runs (at most every PROGRESS_INTERVAL_S), and the whole when it succeeds.
    progress: dict[str, int] | None = None
    owner: str | None = None  # digest of the API key that submitted it (None without API keys)
    attempts: int = 0  # starts by a worker: more than one when a worker was lost while it ran
    # The fingerprint of the model that classified it; a worker whose model differs classifies again.
    model_fingerprint: str | None = None
    revision: int = 0  # one more with every write: the store's compare-and-set
    idempotency_key: str | None = None  # the store's key of the Idempotency-Key that made it
    version: int = FORMAT_VERSION

    # version 1 wrote no version (and had an `extra` field)
    UNWRITTEN: ClassVar[dict[str, Any]] = {"version": 1}


def new_job(
    model: str,
    texts: Sequence[Input],
    single: bool,
    options: ExplainOptions,
    predictions: list[Classification],
    owner: str | None = None,
    model_fingerprint: str | None = None,
) -> StoredJob:
    return StoredJob(
        id=new_job_id(),
        submitted_at=utc_now(),
        model=model,
        single=single,
        texts=[stored(text) for text in texts],
        options=options.model_dump(),
        predictions=[p.model_dump(mode="json") for p in predictions],
        owner=owner,
        model_fingerprint=model_fingerprint,
    )
