"""Stored jobs, stored analyses and cache entries across upgrades, and job states that only move
forward, on a real Redis."""

from __future__ import annotations

import json

import pytest

from api.bodies import job_body
from shared.io.results import Explanation, body
from shared.io.schemas import ExplainOptions
from shared.jobs.job import StoredJob
from shared.jobs.store import JOBS, KEY_PREFIX, Moved, Store
from shared.kinds import CANCELLED, QUEUED, RUNNING, SUCCEEDED
from shared.serving.cache import REDIS_PREFIX, RedisCache, explanation_key
from shared.storage.redis import redis_client

PREDICTION = {"prediction": [{"label": "POSITIVE", "score": 0.9}, {"label": "NEGATIVE", "score": 0.1}]}
EXPLANATION = {
    "tokens": ["[CLS]", "good", "[SEP]"],
    "offsets": [[0, 0], [0, 4], [4, 4]],
    "labels": ["POSITIVE"],
    "values": {"POSITIVE": [0.0, 0.4, 0.0]},
    "base_values": {"POSITIVE": 0.5},
    "model_output": {"POSITIVE": 0.9},
    "output": "probability",
    "max_evals": 500,
    "evaluations": 4,
    "seed": 0,
    "precision": "exact",
    "truncated": False,
}


@pytest.fixture
def store(redis_url: str) -> Store[StoredJob]:
    return Store(redis_client(redis_url), JOBS, ttl_s=600)


def version_1_job(job_id: str, status: str = SUCCEEDED) -> dict:
    """A job as the previous format wrote it: no version, and an `extra` field since removed."""
    return {
        "id": job_id,
        "submitted_at": "2026-11-24T10:00:00.000Z",
        "model": "minilm-sst2",
        "single": True,
        "texts": ["good"],
        "options": {"max_evals": 500, "output": "probability", "labels": "all", "seed": 0},
        "predictions": [dict(PREDICTION, truncated=False)],
        "status": status,
        "finished_at": "2026-11-24T10:00:02.000Z",
        "explanations": [EXPLANATION],
        "error": None,
        "extra": {"queue": "celery"},
    }


def test_a_job_of_the_previous_format_still_reads(store: Store[StoredJob]) -> None:
    store._client.set(KEY_PREFIX + "a" * 32, json.dumps(version_1_job("a" * 32)))
    job = store.load("a" * 32)
    assert job is not None and job.version == 1
    shown = body(job_body(job))
    assert shown["status"] == "succeeded" and shown["result"]["explanation"][1][0] == "good"


def test_unknown_fields_of_a_newer_writer_are_ignored(store: Store[StoredJob]) -> None:
    data = version_1_job("b" * 32) | {"version": 9, "priority": "high"}
    store._client.set(KEY_PREFIX + "b" * 32, json.dumps(data))
    assert job_body(store.load("b" * 32)).status == "succeeded"


def test_a_cancel_racing_a_refresh_stays_cancelled(store: Store[StoredJob]) -> None:
    """The interleaving that used to store `succeeded` with an empty result: a writer reads the
    queued job, a DELETE cancels it, then the first writer tries to finish it."""
    job = StoredJob.from_json(json.dumps(version_1_job("c" * 32, status=QUEUED)))
    job.explanations = None
    store.create(job)
    seen_by_worker = store.load(job.id)
    assert store.update(job.id, CANCELLED) is not None
    seen_by_worker.explanations = []
    assert store.move(seen_by_worker, SUCCEEDED) == Moved.REFUSED  # queued -> succeeded is no move
    assert store.move(seen_by_worker, RUNNING) == Moved.REFUSED  # cancelled is finished
    stored = store.load(job.id)
    assert stored.status == CANCELLED
    assert job_body(stored).status == "cancelled"
    # and the other way round: a job that succeeded first is not turned into a cancelled one
    done = StoredJob.from_json(json.dumps(version_1_job("d" * 32)))
    store._client.set(KEY_PREFIX + done.id, done.to_json())
    assert store.update(done.id, CANCELLED) is None
    assert store.load(done.id).status == SUCCEEDED


def test_a_write_from_a_stale_read_is_refused_and_update_reads_again(store: Store[StoredJob]) -> None:
    job = StoredJob.from_json(json.dumps(version_1_job("f" * 32, status=QUEUED)))
    store.create(job)
    first, second = store.load(job.id), store.load(job.id)
    first.progress = {"done": 1, "total": 4}
    assert store.move(first, RUNNING) == Moved.DONE
    second.progress = {"done": 9, "total": 4}
    assert store.move(second, RUNNING) == Moved.STALE  # it read revision 0; the store holds 1
    assert store.load(job.id).progress == {"done": 1, "total": 4}
    updated = store.update(job.id, RUNNING, lambda r: setattr(r, "attempts", r.attempts + 1))
    assert updated is not None and updated.revision == 2 and updated.progress == {"done": 1, "total": 4}


def test_a_succeeded_job_with_a_missing_result_answers_without_error() -> None:
    broken = StoredJob.from_json(json.dumps(version_1_job("e" * 32) | {"explanations": []}))
    shown = body(job_body(broken))
    assert shown["status"] == "succeeded" and "result" not in shown


def test_cache_entries_of_another_version_or_format_are_misses(redis_url: str) -> None:
    cache = RedisCache(redis_client(redis_url), ttl_s=600)
    explanation = Explanation.model_validate(EXPLANATION)
    key = explanation_key("model", "good", ExplainOptions())
    cache.put(key, explanation)
    assert cache.get(key) == explanation
    client = redis_client(redis_url)
    client.set(REDIS_PREFIX + key, json.dumps(EXPLANATION))  # the previous format: a bare explanation
    assert cache.get(key) is None
    client.set(REDIS_PREFIX + key, json.dumps({"version": 1, "explanation": EXPLANATION}))
    assert cache.get(key) is None
    client.set(REDIS_PREFIX + key, b"\x00not json")
    assert cache.get(key) is None
    assert Explanation.model_validate(EXPLANATION).batch_size is None  # old entries lack it: tolerated


def test_an_analysis_of_the_previous_format_reads_its_spec_under_its_old_name(redis_url: str) -> None:
    """Format 1 stored an analysis's spec (how it reads and folds its input) as `analysis`; a reader
    now takes it as `spec`."""
    from shared.jobs.analysis import ANALYSES, StoredAnalysis

    spec = {"agg_method": "mean_abs", "top_k": 5, "normalize": "none", "text_field": "review"}
    written = json.loads(StoredAnalysis("a" * 32, "2026-12-06T00:00:00.000Z", "tiny", {}, spec).to_json())
    written.pop("spec")
    old = {**written, "analysis": spec, "version": 1}
    analyses = Store(redis_client(redis_url), ANALYSES, ttl_s=600)
    analyses._client.set(ANALYSES.prefix + "a" * 32, json.dumps(old))
    stored = analyses.load("a" * 32)
    assert stored is not None and stored.spec == spec and stored.version == 1
    assert stored.options().text_field == "review"
    assert json.loads(stored.to_json())["spec"] == spec and "analysis" not in json.loads(stored.to_json())
