"""Micro-batching of concurrent classifications, and the explanation cache (memory and Redis)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from shared.batching import MicroBatcher
from shared.cache import MemoryCache, RedisCache, explanation_key
from shared.classifier import classify, classify_encoded
from shared.job_store import redis_client
from shared.model import TextModel, load_text_model
from shared.schemas import ExplainOptions
from shared.service import ClarionService
from shared.settings import Settings
from tests.support import RedisServer

TEXTS = ["good film", "the plot was boring", "i loved the acting", "awful", "not very good at all , really"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TextModel:
    return load_text_model(Settings(model_dir=str(tiny_model_dir), torch_threads=1))


def test_concurrent_requests_share_forward_passes_and_get_their_own_results(tiny: TextModel) -> None:
    passes: list[int] = []

    def run(encoded):
        passes.append(len(encoded))
        time.sleep(0.02)  # a slow forward pass, so that requests pile up behind it
        return classify_encoded(tiny, encoded, 64)

    batcher = MicroBatcher(run, max_rows=64, window_s=0.002)
    results: dict[int, list] = {}

    def client(i: int) -> None:
        text = TEXTS[i % len(TEXTS)]
        results[i] = batcher.classify(tiny.encode([text]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 40
    assert len(passes) < 40 and max(passes) > 1  # requests were gathered
    for i, (result,) in results.items():
        (alone,) = classify(tiny, [TEXTS[i % len(TEXTS)]], 1)
        assert [s.label for s in result.scores] == [s.label for s in alone.scores]
        assert all(abs(a.score - b.score) < 1e-5 for a, b in zip(result.scores, alone.scores, strict=True))


def test_a_lone_request_does_not_wait_for_the_window(tiny: TextModel) -> None:
    batcher = MicroBatcher(lambda e: classify_encoded(tiny, e, 64), max_rows=64, window_s=5.0)
    started = time.perf_counter()
    batcher.classify(tiny.encode(["good"]))
    assert time.perf_counter() - started < 2.0  # far below the 5 s window


def test_a_failing_pass_fails_its_requests_and_the_batcher_keeps_serving(tiny: TextModel) -> None:
    calls = {"n": 0}

    def flaky(encoded):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return classify_encoded(tiny, encoded, 64)

    batcher = MicroBatcher(flaky, max_rows=8, window_s=0)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.classify(tiny.encode(["good"]))
    assert len(batcher.classify(tiny.encode(["good", "bad"]))) == 2


def test_repeated_explanation_comes_from_the_cache(tiny_model_dir: Path) -> None:
    service = ClarionService(Settings(model_dir=str(tiny_model_dir), torch_threads=1, serverless=True))
    service.load()
    options = ExplainOptions(max_evals=300)
    first = service.explain(TEXTS[:2], options)
    again = service.explain(TEXTS[:2], options)  # its latency is measured by `bench classify`
    assert [a is b for a, b in zip(first, again, strict=True)] == [True, True]
    # a different option, text or seed is a different entry
    assert service.explain(TEXTS[:1], ExplainOptions(max_evals=300, seed=1))[0] is not first[0]
    mixed = service.explain([TEXTS[0], TEXTS[3]], options)
    assert mixed[0] is first[0] and mixed[1].tokens[1] == "awful"


def test_cache_key_covers_everything_that_changes_the_numbers() -> None:
    base = explanation_key("model-a", "text", ExplainOptions(), 64)
    variants = [
        explanation_key("model-b", "text", ExplainOptions(), 64),
        explanation_key("model-a", "text!", ExplainOptions(), 64),
        explanation_key("model-a", "text", ExplainOptions(), 32),
        *(
            explanation_key("model-a", "text", ExplainOptions(**{name: value}), 64)
            for name, value in [
                ("max_evals", 499),
                ("output", "logit"),
                ("labels", "predicted"),
                ("labels", ["POSITIVE"]),
                ("seed", 1),
                ("precision", "fast"),
            ]
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert base == explanation_key("model-a", "text", ExplainOptions(), 64)


def test_memory_cache_evicts_least_recently_used(tiny: TextModel) -> None:
    from shared.explainer import explain_texts

    explanation = explain_texts(tiny, ["good"], ExplainOptions(max_evals=20), 16)[0]
    cache = MemoryCache(capacity=2)
    cache.put("a", explanation)
    cache.put("b", explanation)
    assert cache.get("a") is explanation  # a is now the most recent
    cache.put("c", explanation)
    assert cache.get("b") is None and cache.get("a") is explanation and cache.get("c") is explanation


def test_redis_cache_round_trips_and_tolerates_an_outage(tiny: TextModel, tmp_path: Path) -> None:
    from shared.explainer import explain_texts

    explanation = explain_texts(tiny, ["good film"], ExplainOptions(max_evals=20), 16)[0]
    server = RedisServer(tmp_path)
    server.start()
    cache = RedisCache(redis_client(server.url), ttl_s=60)
    try:
        assert cache.get("k") is None
        cache.put("k", explanation)
        assert cache.get("k") == explanation
    finally:
        server.stop()
    assert cache.get("k") is None  # Redis gone: a miss, not an error
    cache.put("k", explanation)


def test_repeated_classification_comes_from_the_cache_unless_turned_off(tiny_model_dir: Path) -> None:
    cached = ClarionService(Settings(model_dir=str(tiny_model_dir), torch_threads=1, serverless=True))
    cached.load()
    first = cached.classify(TEXTS[:2])
    again = cached.classify([TEXTS[1], TEXTS[0], TEXTS[2]])
    assert again[0] is first[1] and again[1] is first[0]
    assert [s.label for s in again[2].scores] == [
        s.label for s in classify(cached.model, [TEXTS[2]], 1)[0].scores
    ]

    settings = Settings(
        model_dir=str(tiny_model_dir), torch_threads=1, serverless=True, explanation_cache_size=0
    )
    uncached = ClarionService(settings)
    uncached.load()
    assert uncached.classify(TEXTS[:1])[0] is not uncached.classify(TEXTS[:1])[0]
