"""The explanation and classification caches (memory and Redis) and their keys."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

import shared.runtime.model
import shared.serving.service
from shared.explanation.amortized import ARTIFACT_VERSION, AmortizedExplainer, load_amortized
from shared.explanation.explainer import ALGORITHM_VERSION, explain_texts
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import Engine
from shared.runtime.model import TextModel
from shared.serving.cache import REDIS_PREFIX, RedisCache, explanation_key
from shared.serving.classifier import classify
from shared.serving.service import ClarionService
from shared.settings import Settings
from shared.storage.memory import MemoryCache
from shared.storage.redis import redis_client
from tests.support import RedisServer, assert_close_to_scale

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


def test_cache_key_covers_the_fast_backend_and_leaves_exact_keys_as_they_were() -> None:
    fast = ExplainOptions(precision="fast")
    backends = ["torch-half-cpu-bf16", "torch-half-cuda-fp16", "onnxruntime-int8", "onnxruntime", "torch"]
    assert len({explanation_key("model-a", "text", fast, backend) for backend in backends}) == len(backends)
    # exact keys are the ones entries already cached under: the material before backends were in it
    exact = ExplainOptions()
    before = json.dumps([ALGORITHM_VERSION, "model-a", "text", list(exact.cache_key())], default=str)
    assert explanation_key("model-a", "text", exact) == hashlib.sha256(before.encode()).hexdigest()


def write_artifact(directory: Path, model: TextModel, seed: int) -> Path:
    """An artifact as `clarion distill` writes it (tests/test_amortized.py trains a real one), with
    random weights: what is tested here is which artifact's numbers are served, not how good they are."""
    import copy

    hidden = model.model.config.hidden_size
    weights = np.random.default_rng(seed).normal(scale=0.05, size=(hidden, len(model.labels)))
    meta = {
        "version": ARTIFACT_VERSION,
        "model_id": model.model_id,
        "model_fingerprint": model.fingerprint,
        "labels": model.labels,
        "validation": {"spearman_median": 0.9},
    }
    encoder = copy.deepcopy(model.model.base_model).eval()
    AmortizedExplainer(encoder, weights, np.zeros(len(model.labels)), 1.0, meta).save(directory)
    return directory


def test_a_model_folders_fingerprint_is_its_content_not_its_path(tiny_model_dir: Path, tmp_path: Path):
    """The same folder named relatively or absolutely, or copied elsewhere with new file times, is
    the same model (an artifact distilled on one machine serves on another); other weights, even by
    one byte, are not."""
    import os

    from shared.runtime.loading import load_text_model

    def fingerprint(folder: Path | str) -> str:
        return load_text_model(Settings(model_dir=str(folder), torch_threads=1)).fingerprint

    copied = shutil.copytree(tiny_model_dir, tmp_path / "copied", copy_function=shutil.copy)  # new times
    weights = next(copied.glob("*.safetensors"))
    assert weights.stat().st_mtime_ns != next(tiny_model_dir.glob("*.safetensors")).stat().st_mtime_ns
    relative = os.path.relpath(tiny_model_dir)
    assert fingerprint(tiny_model_dir) == fingerprint(relative) == fingerprint(copied)
    content = bytearray(weights.read_bytes())
    content[-1] ^= 1  # the last weight's lowest bit
    weights.write_bytes(bytes(content))
    assert fingerprint(copied) != fingerprint(tiny_model_dir)


def test_an_artifacts_fingerprint_is_its_content_not_its_path(engine: Engine, tmp_path: Path) -> None:
    model = engine.model
    first = write_artifact(tmp_path / "a", model, seed=1)
    moved = shutil.copytree(first, tmp_path / "elsewhere" / "a")
    other = write_artifact(tmp_path / "b", model, seed=2)
    a, a_again, b = (load_amortized(str(d), model, min_spearman=-1) for d in (first, moved, other))
    assert a.fingerprint == a_again.fingerprint != b.fingerprint
    amortized = ExplainOptions(precision="amortized")
    keys = [explanation_key(model.cache_identity, "text", amortized, x.fingerprint) for x in (a, a_again, b)]
    assert keys[0] == keys[1] != keys[2]


def test_a_shared_cache_never_serves_another_artifacts_values(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Processes sharing one Redis: an entry computed with artifact A is not served by a process that
    loaded artifact B, and is served by one that loaded A from another folder."""
    from tests.support import start_engine

    loaded = start_engine(tiny_model_dir)
    first = write_artifact(tmp_path / "a", loaded.model, seed=1)
    other = write_artifact(tmp_path / "b", loaded.model, seed=2)
    moved = shutil.copytree(first, tmp_path / "elsewhere" / "a")
    loaded.stop()
    server = RedisServer(tmp_path)
    server.start()
    client = redis_client(server.url)
    options = ExplainOptions(precision="amortized")

    def explained_with(artifact: Path) -> list[float]:
        settings = Settings(
            model_dir=str(tiny_model_dir),
            torch_threads=1,
            exact_backend="torch",
            redis_url=server.url,
            amortized_explainer=str(artifact),
            amortized_min_spearman=-1,
        )
        service = ClarionService(settings)
        service.load()
        try:
            explanation = service.explain(["the plot was boring"], options)[0]
            return explanation.values[explanation.labels[0]]
        finally:
            service.stop()

    try:
        with_a = explained_with(first)
        with_b = explained_with(other)
        assert len(client.keys(REDIS_PREFIX + "*")) == 2  # B computed its own entry
        assert with_b != pytest.approx(with_a, abs=1e-6)
        assert explained_with(moved) == with_a
        assert len(client.keys(REDIS_PREFIX + "*")) == 2  # the same artifact elsewhere: A's entry
    finally:
        server.stop()


def test_fast_explanations_are_cached_under_the_backend_that_computed_them(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fast runs exact's passes until its runner is chosen in the background (here the int8 graph,
    forced): nothing is cached meanwhile, and an entry made in int8 is not served once fast runs fp32."""
    gate = threading.Event()
    export = shared.serving.service.onnx_exact

    def gated_export(*args: object) -> object:
        gate.wait(60)  # hold the background attach so that the test sees fast's provisional backend
        return export(*args)

    monkeypatch.setattr(shared.serving.service, "onnx_exact", gated_export)
    settings = Settings(
        model_dir=str(tiny_model_dir),
        torch_threads=1,
        serverless=True,
        model_cache_dir=str(tmp_path),
        fast_backend="onnxruntime-int8",
    )
    service = ClarionService(settings, threads=1)
    service.load()
    options = ExplainOptions(max_evals=60, precision="fast")
    try:
        provisional = service.explain(TEXTS[:1], options)
        assert service.explain(TEXTS[:1], options)[0] is not provisional[0]  # not cached
        gate.set()
        for thread in threading.enumerate():
            if thread.name == "clarion-backends":
                thread.join(120)
        assert service.status().fast_backend == "onnxruntime-int8"
        in_int8 = service.explain(TEXTS[:1], options)[0]
        assert service.explain(TEXTS[:1], options)[0] is in_int8  # settled: cached

        service.model.fast_runner = None  # fast now runs exact's fp32 graph
        in_fp32 = service.explain(TEXTS[:1], options)[0]
        assert in_fp32 is not in_int8
        label = in_int8.labels[0]
        assert in_fp32.values[label] != pytest.approx(in_int8.values[label], abs=1e-9)
    finally:
        gate.set()
        service.stop()


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
    # torch throughout: a background switch to onnxruntime between the two calls would move the last
    # digits of the second one (measured: 1.4e-6 on a value of 0.15)
    settings = Settings(
        model_dir=str(tiny_model_dir),
        torch_threads=1,
        serverless=True,
        explanation_cache_size=0,
        exact_backend="torch",
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
            assert_close_to_scale(prediction.explanation.values[label], values, rel=1e-5)
        top = prediction.classification.prediction[0]
        assert prediction.explanation.model_output[top.label] == pytest.approx(top.score, abs=1e-6)
