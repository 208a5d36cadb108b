"""Job records and cache entries across upgrades, and job states that only move forward, on a real
Redis."""

from __future__ import annotations

import json

import pytest

from api.bodies import job_body
from shared.io.results import Explanation, body
from shared.io.schemas import ExplainOptions
from shared.jobs.record import JobRecord
from shared.jobs.store import KEY_PREFIX, RedisJobStore
from shared.kinds import CANCELLED, QUEUED, SUCCEEDED
from shared.serving.cache import REDIS_PREFIX, RedisCache, explanation_key
from shared.storage.redis import redis_client
from tests.support import RedisServer

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


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("records"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def store(redis_url: str) -> RedisJobStore:
    return RedisJobStore(redis_client(redis_url), ttl_s=600)


def version_1_record(job_id: str, status: str = SUCCEEDED) -> dict:
    """A record as the previous format wrote it: no version, and an `extra` field since removed."""
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


def test_a_record_of_the_previous_format_still_reads(store: RedisJobStore) -> None:
    store._client.set(KEY_PREFIX + "a" * 32, json.dumps(version_1_record("a" * 32)))
    record = store.load("a" * 32)
    assert record is not None and record.version == 1
    shown = body(job_body(record))
    assert shown["status"] == "succeeded" and shown["result"]["explanation"][1][0] == "good"


def test_unknown_fields_of_a_newer_writer_are_ignored(store: RedisJobStore) -> None:
    data = version_1_record("b" * 32) | {"version": 9, "priority": "high"}
    store._client.set(KEY_PREFIX + "b" * 32, json.dumps(data))
    assert job_body(store.load("b" * 32)).status == "succeeded"


def test_a_cancel_racing_a_refresh_stays_cancelled(store: RedisJobStore) -> None:
    """The interleaving that used to store `succeeded` with an empty result: a GET reads the queued
    record, a DELETE cancels it, then the GET saves what Celery said (SUCCESS, [])."""
    record = JobRecord.from_json(json.dumps(version_1_record("c" * 32, status=QUEUED)))
    record.explanations = None
    store.save(record)
    seen_by_get = store.load(record.id)
    cancelling = store.load(record.id)
    cancelling.status = CANCELLED
    assert store.save_unless_finished(cancelling)
    seen_by_get.status, seen_by_get.explanations = SUCCEEDED, []
    assert not store.save_unless_finished(seen_by_get)  # the finished state is not overwritten
    stored = store.load(record.id)
    assert stored.status == CANCELLED
    assert job_body(stored).status == "cancelled"
    # and the other way round: a job that succeeded first is not turned into a cancelled one
    done = JobRecord.from_json(json.dumps(version_1_record("d" * 32)))
    store.save(done)
    done.status = CANCELLED
    assert not store.save_unless_finished(done)
    assert store.load(done.id).status == SUCCEEDED


def test_a_succeeded_record_with_a_missing_result_answers_without_error() -> None:
    broken = JobRecord.from_json(json.dumps(version_1_record("e" * 32) | {"explanations": []}))
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
