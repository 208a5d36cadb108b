"""A dataset analysis as a job: staged in chunks, each chunk explained by one task, merged at the end.

The API stages the input (validating each line) into chunks of ANALYSIS_CHUNK_TEXTS and stores the
analysis; then a task per chunk runs (`run_chunk`: on the Celery workers, all at once, or one after
the other within the request in single-process mode). A chunk stores its records before it counts
as done, and a chunk already stored is not explained again, so a task that is delivered twice (a
killed worker, a redelivery) costs at most its own chunk. Whichever task completes the last chunk
merges: it folds every chunk's records, in input order, into `analysis.json` (shared/analysis/),
stores it (and writes it, the records and the report to S3 when asked), and marks the analysis
succeeded. Like an explanation job's, an analysis's state is written by compare-and-set and never
moves out of a finished state.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from shared.analysis.aggregate import AnalysisOptions, analyze_records
from shared.analysis.units import Normalizer
from shared.errors import ClarionError, InvalidRequest, JobBackendUnavailable, NotFound, PayloadTooLarge
from shared.io.inputs import TextPair, as_record, restored, stored, zero_shot_fields
from shared.io.records import Record
from shared.io.schemas import SeedBody, parse_model, text_problem
from shared.jobs.inline import FolderKeys
from shared.jobs.job import (
    _JOB_ID,
    Idempotency,
    Stored,
    new_job_id,
    progress_of,
    replayed,
    stamp_finished,
    utc_now,
)
from shared.jobs.state import MOVES
from shared.jobs.store import ANALYSIS_PREFIX, Kind, Store
from shared.kinds import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED
from shared.runtime.engine import Ticket
from shared.serving.service import ClarionService
from shared.settings import Settings

# Analyses recorded whose chunk tasks are not all known to be published (the store's ledger).
UNPUBLISHED_ANALYSES = "clarion:analyses:unpublished"
ACTIVE_ANALYSES = "clarion:analyses:active"  # queued or running: at most ANALYSIS_MAX_RUNNING
FORMAT_VERSION = 2  # 1 called `spec` `analysis`


@dataclass
class StoredAnalysis(Stored):
    """What is known of an analysis from the moment it is accepted."""

    id: str
    submitted_at: str
    model: str
    # the explanation options (zero-shot's candidate_labels among them), as a request body holds them
    parameters: dict[str, Any]
    # how it reads and folds its input: agg_method, top_k, normalize, text_field, label_field, pair_field
    spec: dict[str, Any]
    input: str | None = None  # s3://... or None (the request body)
    output: str | None = None  # s3://... prefix the files are written under, or None
    chunks: int = 0
    texts: int = 0  # lines explained (the others were refused when staged, and are skipped)
    lines: int = 0
    status: str = QUEUED
    started_at: str | None = None
    finished_at: str | None = None
    progress: dict[str, int] | None = None  # texts done of `texts`
    error: dict[str, str] | None = None
    owner: str | None = None
    revision: int = 0  # one more with every write: the store's compare-and-set
    idempotency_key: str | None = None
    version: int = FORMAT_VERSION
    RENAMED: ClassVar[dict[str, str]] = {"analysis": "spec"}

    def options(self) -> AnalysisOptions:
        spec = self.spec
        return AnalysisOptions(
            agg_method=spec["agg_method"],
            top_k=spec["top_k"],
            normalizer=Normalizer.parse(spec["normalize"]),
            text_field=spec["text_field"],
            pair_field=spec.get("pair_field"),  # absent from records staged before pairs were read
        )


class AnalysisStore(Protocol):
    """Where an analysis's entry, chunks and results live: Redis with workers, a folder inline.
    Its entry changes only by the state machine's checked moves (shared/jobs/state.py)."""

    def create(
        self, entry: StoredAnalysis, idempotency: Idempotency | None = None
    ) -> tuple[StoredAnalysis, bool]: ...
    def find(self, idempotency: Idempotency | None) -> StoredAnalysis | None: ...
    def load(self, analysis_id: str) -> StoredAnalysis | None: ...
    def update(
        self, analysis_id: str, target: str, change: Callable[[StoredAnalysis], None] | None = None
    ) -> StoredAnalysis | None: ...
    def remove(self, analysis_id: str, parts: list[str] = ...) -> bool: ...
    def put(self, analysis_id: str, name: str, data: bytes) -> None: ...
    def get(self, analysis_id: str, name: str) -> bytes | None: ...
    def chunk_done(self, analysis_id: str, index: int, texts: int) -> tuple[int, int]:
        """Count the chunk as done (once, however often it is told); (chunks done, texts done)."""
        ...

    def drop(self, analysis_id: str, parts: list[str]) -> None: ...


def chunk_parts(entry: StoredAnalysis) -> list[str]:
    """What a running analysis keeps beside its entry; nothing reads it once it is finished."""
    return [f"{part}:{i}" for i in range(entry.chunks) for part in ("input", "output")] + ["done"]


def all_parts(entry: StoredAnalysis) -> list[str]:
    return [*chunk_parts(entry), "analysis"]


WAITING_ANALYSES = "clarion:analyses:waiting"  # not finished: a chunk's task may still be lost
ANALYSES = Kind(
    "analysis",
    ANALYSIS_PREFIX,
    UNPUBLISHED_ANALYSES,
    StoredAnalysis,
    active=ACTIVE_ANALYSES,
    waiting=WAITING_ANALYSES,
    waits_until_finished=True,
)


def analysis_store_for(settings: Settings) -> Store[StoredAnalysis]:
    from shared.storage.redis import redis_client

    assert settings.redis_store_url is not None, "validated by Settings"
    client = redis_client(settings.redis_store_url)
    return Store(client, ANALYSES, settings.job_result_ttl_s, settings.analysis_max_running)


# An inline analysis's entry in its folder, under the file name earlier versions wrote, so an
# analysis stored before an upgrade is still read after it.
_ENTRY = "record.json"


class FolderAnalysisStore:
    """Single-process mode: an analysis is a folder of files (every HTTP process of the server reads
    it), written atomically; a move holds the folder's lock (flock), so a DELETE from another HTTP
    process and the running request never overwrite each other. Folders older than `ttl_s` are
    removed as new ones are made."""

    def __init__(self, folder: str | Path, ttl_s: int, keys: FolderKeys | None = None) -> None:
        self._folder = Path(folder)
        self._folder.mkdir(parents=True, exist_ok=True)
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._keys = keys or FolderKeys(self._folder.with_name(self._folder.name + "-keys"), ttl_s)

    def _path(self, analysis_id: str, name: str) -> Path:
        if not _JOB_ID.fullmatch(analysis_id):
            raise NotFound(f"no analysis {analysis_id!r}")  # never a path outside the folder
        return self._folder / analysis_id / name.replace(":", "-")

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_bytes(data)
        os.replace(partial, path)

    @contextmanager
    def _locked(self, analysis_id: str) -> Iterator[None]:
        lock_path = self._path(analysis_id, ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def create(
        self, entry: StoredAnalysis, idempotency: Idempotency | None = None
    ) -> tuple[StoredAnalysis, bool]:
        """Nothing to publish: it runs within its request. A key's first request holds it."""
        made = self.find(idempotency)
        if made is not None:
            return made, True
        self._sweep()
        if idempotency is not None:
            entry.idempotency_key = idempotency.key_name
        self._write(self._path(entry.id, _ENTRY), entry.to_json().encode())
        if idempotency is not None:
            self._keys.put(idempotency.key_name, {"id": entry.id, "request": idempotency.request})
        return entry, False

    def find(self, idempotency: Idempotency | None) -> StoredAnalysis | None:
        if idempotency is None:
            return None
        return replayed(self._keys.get(idempotency.key_name), idempotency, self.load)

    def load(self, analysis_id: str) -> StoredAnalysis | None:
        try:
            return StoredAnalysis.from_json(self._path(analysis_id, _ENTRY).read_bytes())
        except (FileNotFoundError, NotFound):
            return None

    def update(
        self, analysis_id: str, target: str, change: Callable[[StoredAnalysis], None] | None = None
    ) -> StoredAnalysis | None:
        with self._locked(analysis_id):
            entry = self.load(analysis_id)
            if entry is None or entry.status not in MOVES[target]:
                return None
            if change is not None:
                change(entry)
            entry.status, entry.revision = target, entry.revision + 1
            self._write(self._path(analysis_id, _ENTRY), entry.to_json().encode())
            return entry

    def remove(self, analysis_id: str, parts: list[str] = ()) -> bool:  # type: ignore[assignment]
        with self._locked(analysis_id):
            entry = self.load(analysis_id)
            if entry is not None and entry.status not in FINISHED:
                return False
        shutil.rmtree(self._folder / analysis_id, ignore_errors=True)
        if entry is not None and entry.idempotency_key:  # the key goes with its analysis
            self._keys.delete(entry.idempotency_key)
        return True

    def put(self, analysis_id: str, name: str, data: bytes) -> None:
        self._write(self._path(analysis_id, name), data)

    def get(self, analysis_id: str, name: str) -> bytes | None:
        try:
            return self._path(analysis_id, name).read_bytes()
        except FileNotFoundError:
            return None

    def chunk_done(self, analysis_id: str, index: int, texts: int) -> tuple[int, int]:
        with self._locked(analysis_id):
            done = json.loads(self.get(analysis_id, "done.json") or b"{}")
            done.setdefault(str(index), texts)
            self.put(analysis_id, "done.json", json.dumps(done).encode())
        return len(done), sum(done.values())

    def drop(self, analysis_id: str, parts: list[str]) -> None:
        for name in parts:
            self._path(analysis_id, "done.json" if name == "done" else name).unlink(missing_ok=True)

    def _sweep(self) -> None:
        now = time.time()
        for path in self._folder.iterdir():
            try:
                if path.is_dir() and now - path.stat().st_mtime > self._ttl_s:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                continue


# ---- accepting an analysis -------------------------------------------------------------------------


def new_analysis(
    model: str,
    parameters: dict[str, Any],
    spec: dict[str, Any],
    settings: Settings,
    input_uri: str | None = None,
    output_uri: str | None = None,
    owner: str | None = None,
) -> StoredAnalysis:
    """A new analysis's entry, its options checked (a wrong one is a 400 before anything is stored)."""
    body = parse_model(SeedBody, {"data": "x", **parameters}, settings)
    if body.candidate_labels is None and {"hypothesis_template", "multi_label"} & set(parameters):
        raise InvalidRequest("hypothesis_template and multi_label go with candidate_labels (zero-shot)")
    if body.candidate_labels is not None and spec.get("pair_field") is not None:
        raise InvalidRequest(
            "candidate_labels score single texts: an analysis reads text pairs (pair_field) or "
            "zero-shot texts, not both"
        )
    try:
        StoredAnalysis("", "", model, parameters, spec).options()
    except (ValueError, KeyError) as exc:
        raise InvalidRequest(str(exc)) from None
    return StoredAnalysis(
        id=new_job_id(),
        submitted_at=utc_now(),
        model=model,
        parameters=parameters,
        spec=spec,
        input=input_uri,
        output=output_uri,
        owner=owner,
    )


def stage(
    store: AnalysisStore,
    entry: StoredAnalysis,
    lines: Iterable[Record],
    settings: Settings,
    idempotency: Idempotency | None = None,
) -> tuple[StoredAnalysis, bool]:
    """Check every line and store the lines in chunks of ANALYSIS_CHUNK_TEXTS texts (a refused line
    is kept with its reason, and becomes an error record); then store its entry, noted
    unpublished. The entry, and whether its Idempotency-Key made it before (then the chunks staged
    here are dropped, and the first one is the answer)."""
    chunk: list[dict[str, Any]] = []
    texts_in_chunk = 0

    def flush() -> None:
        nonlocal chunk, texts_in_chunk
        if chunk:
            store.put(entry.id, f"input:{entry.chunks}", json.dumps(chunk).encode())
            entry.chunks += 1
            chunk, texts_in_chunk = [], 0

    for line in lines:
        entry.lines += 1
        if entry.lines > settings.analysis_max_texts:
            store.drop(entry.id, chunk_parts(entry))
            raise PayloadTooLarge(f"more than {settings.analysis_max_texts} lines (ANALYSIS_MAX_TEXTS)")
        problem = line.problem or text_problem(line.text, entry.parameters, settings)
        if problem:
            chunk.append({"line": line.line, "error": {"code": "invalid_line", "message": problem}})
        else:
            assert line.text is not None
            chunk.append({"line": line.line, "text": stored(line.text), "label": line.label})
            entry.texts += 1
            texts_in_chunk += 1
            if texts_in_chunk == settings.analysis_chunk_texts:
                flush()
    flush()
    if entry.texts == 0:
        store.drop(entry.id, chunk_parts(entry))
        raise InvalidRequest("the input holds no text that can be explained")
    entry.progress = progress_of(0, entry.texts)
    try:
        created, replayed = store.create(entry, idempotency)
    except JobBackendUnavailable:
        raise  # the entry may be stored all the same: its chunks stay (they expire with it)
    except ClarionError:  # refused (a limit, a key used with another request): nothing was recorded
        store.drop(entry.id, chunk_parts(entry))
        raise
    if created.id != entry.id:  # the key's first request made it: this one's chunks are not needed
        store.drop(entry.id, chunk_parts(entry))
    return created, replayed


# ---- running it ------------------------------------------------------------------------------------

# Texts of a chunk (texts and text pairs, as `stored` keeps them) -> their records (the API's
# per-text bodies), within a ticket.
ExplainRecords = Callable[[list[str | dict[str, Any]], Ticket], list[dict[str, Any]]]
# The files of a finished analysis -> written where its `output` says.
Publish = Callable[[StoredAnalysis, dict[str, bytes]], None]


def run_chunk(
    store: AnalysisStore,
    analysis_id: str,
    index: int,
    explain: ExplainRecords,
    ticket: Ticket,
    publish: Publish,
) -> StoredAnalysis | None:
    """Explain chunk `index` unless it is stored already, count it done, and merge when it was the
    last. Returns the entry as it now is (None: gone, or finished before this ran)."""
    entry = store.load(analysis_id)
    if entry is None or entry.status in FINISHED:
        return None
    if entry.status == QUEUED:
        store.update(analysis_id, RUNNING, _started)
    raw = store.get(analysis_id, f"input:{index}")
    if raw is None:
        raise NotFound(f"analysis {analysis_id}: no chunk {index}")
    entries = json.loads(raw)
    if store.get(analysis_id, f"output:{index}") is None:
        store.put(analysis_id, f"output:{index}", _explained(entries, explain, ticket))
    texts = sum("text" in e for e in entries)
    chunks_done, texts_done = store.chunk_done(analysis_id, index, texts)

    def progressed(entry: StoredAnalysis) -> None:
        done = max(texts_done, (entry.progress or {}).get("done", 0))  # a slower writer never goes back
        entry.progress = progress_of(done, entry.texts)

    entry = store.update(analysis_id, RUNNING, progressed)
    if entry is None:  # finished (cancelled, failed) or gone meanwhile
        return store.load(analysis_id)
    if chunks_done < entry.chunks:
        return entry
    return merge(store, entry, publish)


def _started(entry: StoredAnalysis) -> None:
    entry.started_at = entry.started_at or utc_now()


def _explained(entries: list[dict[str, Any]], explain: ExplainRecords, ticket: Ticket) -> bytes:
    """The chunk's records as JSON Lines, in input order: each text's explanation, each refused
    line's error."""
    lines = [e for e in entries if "text" in e]
    results = iter(explain([e["text"] for e in lines], ticket)) if lines else iter(())
    out = []
    for entry in entries:
        if "text" not in entry:
            out.append({"line": entry["line"], "error": entry["error"]})
            continue
        truth = {} if entry.get("label") is None else {"true_label": entry["label"]}
        out.append({"line": entry["line"], **as_record(restored(entry["text"])), **truth, **next(results)})
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out).encode()


def records_of(store: AnalysisStore, entry: StoredAnalysis) -> Iterator[bytes]:
    """Every record of the analysis, chunk by chunk, in input order. A chunk's records gone (another
    delivery merged it and dropped them, or it was cancelled) stop the merge: a document is made of
    every chunk or not at all."""
    for index in range(entry.chunks):
        output = store.get(entry.id, f"output:{index}")
        if output is None:
            raise NotFound(
                f"analysis {entry.id}: the records of chunk {index} are gone (merged or cancelled)"
            )
        yield from output.splitlines()


def merge(store: AnalysisStore, entry: StoredAnalysis, publish: Publish) -> StoredAnalysis:
    """Fold every record into analysis.json, store it, publish the files, and mark it succeeded.
    Merging again (a redelivered last chunk) gives the same document."""
    analysis = analyze_records(records_of(store, entry), entry.options())
    document = analysis.document(
        input=entry.input or "request body",
        label_field=entry.spec.get("label_field"),
        **zero_shot_fields(entry.parameters),
    )
    encoded = (json.dumps(document, ensure_ascii=False) + "\n").encode()
    store.put(entry.id, "analysis", encoded)
    if entry.output:
        publish(entry, analysis_files(store, entry, document))

    def succeeded(entry: StoredAnalysis) -> None:
        entry.finished_at = utc_now()

    finished = store.update(entry.id, SUCCEEDED, succeeded)
    if finished is None:  # cancelled or failed meanwhile: that outcome stands
        return store.load(entry.id) or entry
    store.drop(entry.id, chunk_parts(finished))  # Redis keeps the document alone from now on
    return finished


def analysis_files(store: AnalysisStore, entry: StoredAnalysis, document: dict[str, Any]) -> dict[str, bytes]:
    """What `clarion analyze` writes: analysis.json, records.jsonl and report.html."""
    from shared.render.report import analysis_report

    return {
        "analysis.json": (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode(),
        "records.jsonl": b"".join(line + b"\n" for line in records_of(store, entry)),
        "report.html": analysis_report(document, title=f"Clarion analysis {entry.id}").encode(),
    }


CONTENT_TYPES = {
    "analysis.json": "application/json",
    "records.jsonl": "application/jsonlines",
    "report.html": "text/html; charset=utf-8",
}


def s3_publisher(settings: Settings) -> Publish:
    """Writes a finished analysis's files under its `output`, checked again against this process's
    S3_ALLOWED_PREFIXES where it is written: an analysis staged before the prefixes narrowed, or by
    another process, must not write outside what these settings allow."""
    from shared.storage.s3 import write_objects

    def publish(entry: StoredAnalysis, files: dict[str, bytes]) -> None:
        assert entry.output is not None
        write_objects(entry.output, files, CONTENT_TYPES, settings.s3_allowed_prefixes)

    return publish


def _request(entry: StoredAnalysis, settings: Settings) -> SeedBody:
    """The analysis's options as a request holds them: how to explain, and zero-shot's labels."""
    return parse_model(SeedBody, {"data": "x", **entry.parameters}, settings)


def check_analysis(service: ClarionService, entry: StoredAnalysis) -> None:
    """What this service cannot explain with the analysis's options is a 400 at submit, before its
    input is read: labels it does not score, zero-shot labels without an NLI model, what text pairs
    and zero-shot texts cannot take, an unusable amortized artifact."""
    request = _request(entry, service.settings)
    pairs = entry.spec.get("pair_field") is not None
    service.check_options(request.explain_options(), [TextPair("x", "x")] if pairs else request.inputs(["x"]))


def record_explainer(service: ClarionService, entry: StoredAnalysis) -> ExplainRecords:
    """The analysis's texts (stored as `stored` keeps them) explained with its options, by this
    process's service; with candidate_labels each text is a zero-shot text."""
    request = _request(entry, service.settings).model_copy(update={"explain": True})

    def explain(texts: list[str | dict[str, Any]], ticket: Ticket) -> list[dict[str, Any]]:
        return service.results([restored(t) for t in texts], request, ticket)

    return explain


class Analyses(Protocol):
    """What the API needs from where analyses run: inline (below) or on the workers (api/queue.py)."""

    asynchronous: bool
    store: AnalysisStore

    def submit(self, entry: StoredAnalysis, ticket: Ticket) -> StoredAnalysis:
        """Run (inline, within `ticket`) or publish an analysis staged and recorded."""
        ...

    def delete(self, analysis_id: str) -> StoredAnalysis | None:
        """Cancel an unfinished analysis (returned, cancelled), or remove a finished one (None)."""
        ...


class InlineAnalyses:
    """Single-process mode: an analysis runs chunk after chunk within its request (and its deadline)."""

    asynchronous = False

    def __init__(self, store: AnalysisStore, service: ClarionService) -> None:
        self.store = store
        self._service = service

    def submit(self, entry: StoredAnalysis, ticket: Ticket) -> StoredAnalysis:
        explain = record_explainer(self._service, entry)
        publish = s3_publisher(self._service.settings)
        try:
            for index in range(entry.chunks):
                run_chunk(self.store, entry.id, index, explain, ticket, publish)
        except ClarionError as exc:
            fail(self.store, entry.id, exc.message)
            raise
        return load_or_404(self.store, entry.id)

    def delete(self, analysis_id: str) -> StoredAnalysis | None:
        return cancel_or_remove(self.store, analysis_id)


def fail(store: AnalysisStore, analysis_id: str, message: str) -> None:
    """Mark the analysis failed (unless it is finished already), and drop its chunks."""

    def failed(record: StoredAnalysis) -> None:
        record.finished_at = utc_now()
        record.error = {"code": "analysis_failed", "message": message}

    record = store.update(analysis_id, FAILED, failed)
    if record is not None:
        store.drop(analysis_id, chunk_parts(record))


def cancel_or_remove(store: AnalysisStore, analysis_id: str) -> StoredAnalysis | None:
    """DELETE: a queued or running analysis is cancelled (its tasks stop within a pass); a finished
    one is removed with everything it stored (None)."""
    record = load_or_404(store, analysis_id)
    cancelled = store.update(analysis_id, CANCELLED, stamp_finished)
    if cancelled is not None:
        store.drop(analysis_id, chunk_parts(cancelled))  # its running chunks stop within a pass
        return cancelled
    store.remove(analysis_id, all_parts(record))  # finished (maybe moments ago): removed
    return None


def load_or_404(store: AnalysisStore, analysis_id: str) -> StoredAnalysis:
    record = store.load(analysis_id)
    if record is None:
        raise NotFound(f"no analysis {analysis_id!r}")
    return record


def is_cancelled(store: AnalysisStore, analysis_id: str) -> bool:
    """For a running chunk's ticket: stop once the analysis is finished (cancelled, or failed by
    another chunk) or gone; a Redis blip counts as not cancelled."""
    try:
        record = store.load(analysis_id)
    except JobBackendUnavailable:
        return False
    return record is None or record.status in FINISHED
