"""The explanation and classification caches (memory and Redis) and their keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.explanation.explainer import explain_texts
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import Engine
from shared.serving.cache import RedisCache, explanation_key
from shared.serving.classifier import classify
from shared.serving.service import ClarionService
from shared.settings import Settings
from shared.storage.memory import MemoryCache
from shared.storage.redis import redis_client
from tests.support import RedisServer

TEXTS = ["good film", "the plot was boring", "i loved the acting", "awful", "not very good at all , really"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    from tests.support import start_engine

    engine = start_engine(tiny_model_dir)
    yield engine
    engine.stop()


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
    assert mixed[0] is first[0] and mixed[1].units[1] == "awful"


def test_cache_key_covers_everything_that_changes_the_numbers() -> None:
    base = explanation_key("model-a", "text", ExplainOptions())
    variants = [
        explanation_key("model-b", "text", ExplainOptions()),
        explanation_key("model-a", "text!", ExplainOptions()),
        *(
            explanation_key("model-a", "text", ExplainOptions(**{name: value}))
            for name, value in [
                ("max_evals", 499),
                ("output", "logit"),
                ("labels", "predicted"),
                ("labels", ["POSITIVE"]),
                ("seed", 1),
                ("precision", "fast"),
                ("batch_size", 6),
            ]
        ),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert base == explanation_key("model-a", "text", ExplainOptions())
    assert base == explanation_key("model-a", "text", ExplainOptions(batch_size=5))  # the default


def test_cache_key_changes_with_the_algorithm_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.explanation.explainer

    before = explanation_key("model-a", "text", ExplainOptions())
    monkeypatch.setattr(
        shared.explanation.explainer, "ALGORITHM_VERSION", shared.explanation.explainer.ALGORITHM_VERSION + 1
    )
    assert explanation_key("model-a", "text", ExplainOptions()) != before


def test_memory_cache_evicts_least_recently_used(engine: Engine) -> None:
    from shared.explanation.explainer import explain_texts

    explanation = explain_texts(engine, ["good"], ExplainOptions(max_evals=20))[0]
    cache = MemoryCache(capacity=2)
    cache.put("a", explanation)
    cache.put("b", explanation)
    assert cache.get("a") is explanation  # a is now the most recent
    cache.put("c", explanation)
    assert cache.get("b") is None and cache.get("a") is explanation and cache.get("c") is explanation


def test_redis_cache_round_trips_and_tolerates_an_outage(engine: Engine, tmp_path: Path) -> None:
    from shared.explanation.explainer import explain_texts

    explanation = explain_texts(engine, ["good film"], ExplainOptions(max_evals=20))[0]
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
    assert [s.label for s in again[2].prediction] == [
        s.label for s in classify(cached.engine, [TEXTS[2]])[0].prediction
    ]

    settings = Settings(
        model_dir=str(tiny_model_dir), torch_threads=1, serverless=True, explanation_cache_size=0
    )
    uncached = ClarionService(settings)
    uncached.load()
    assert uncached.classify(TEXTS[:1])[0] is not uncached.classify(TEXTS[:1])[0]


def test_classify_and_explain_together_tokenize_and_run_each_text_once(tiny_model_dir: Path) -> None:
    """The use case's one path: a text classified and explained in one call costs its explanation's
    rows and nothing more (its unmasked row, run to classify it, is the explainer's first output)."""
    settings = Settings(
        model_dir=str(tiny_model_dir), torch_threads=1, serverless=True, explanation_cache_size=0
    )
    service = ClarionService(settings, threads=1)
    service.load()
    options = ExplainOptions(max_evals=200)
    rows = lambda: service.engine.stats.snapshot()["rows"]  # noqa: E731
    before = rows()
    alone = explain_texts(service.engine, TEXTS[:3], options)  # the explainer alone, no classification
    explained_only = rows() - before
    before = rows()
    together = service.predict(TEXTS[:3], options=options)
    assert rows() - before == explained_only  # classifying too ran no extra row
    for prediction, explanation in zip(together, alone, strict=True):
        # the same numbers, to float rounding: the unmasked row ran padded beside the other texts
        for label, values in explanation.values.items():
            assert prediction.explanation.values[label] == pytest.approx(values, abs=1e-6)
        top = prediction.classification.prediction[0]
        assert prediction.explanation.model_output[top.label] == pytest.approx(top.score, abs=1e-6)
