"""Exact passes through onnxruntime: torch's logits, a cached export, a guarded swap, torch as fallback."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from shared.errors import ModelLoadError
from shared.model import TextModel, load_text_model
from shared.onnx_backend import _check, onnx_exact
from shared.service import ClarionService
from shared.settings import Settings
from tests.support import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TextModel:
    return load_text_model(Settings(model_dir=str(tiny_model_dir), torch_threads=1))


def rows_of(model: TextModel, texts: list[str]) -> list[np.ndarray]:
    return [e.ids for e in model.encode(texts)]


def test_logits_equal_torchs_padded_or_not(tiny: TextModel, tmp_path: Path) -> None:
    runner = onnx_exact(tiny, tmp_path, threads=1)
    for rows in (
        rows_of(tiny, ["the film was great", "bad", "i loved it , not very boring at all"]),
        rows_of(tiny, ["the plot was boring and the acting awful"]) * 7,
    ):
        ids, attention = tiny.padded(rows)
        expected = tiny.torch_forward(ids, attention, "exact")
        np.testing.assert_allclose(runner(ids, attention), expected, atol=1e-5, rtol=0)
    tiny.exact_runner = runner  # and through the model's own pass, as the engine calls it
    try:
        assert tiny.exact_backend == "onnxruntime"
        rows = rows_of(tiny, ["good", "not good at all"])
        np.testing.assert_allclose(
            tiny.forward(rows), tiny.torch_forward(*tiny.padded(rows), "exact"), atol=1e-5, rtol=0
        )
    finally:
        tiny.exact_runner = None


def test_a_bert_gets_its_own_graph_and_other_models_transformers_module(
    tiny: TextModel, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A BERT classifier is exported as Clarion's graph (eager attention, its last layer at [CLS]
    only) and runs every width there; another architecture is exported as transformers' module and
    its widest passes stay on torch. Both give torch's logits, padded or not."""
    distilbert_dir = build_tiny_model(
        tmp_path_factory.mktemp("distilbert"), ["a", "b"], architecture="distilbert"
    )
    distilbert = load_text_model(Settings(model_dir=str(distilbert_dir), torch_threads=1))
    for model, graph, max_width in ((tiny, "-bert-", 1 << 30), (distilbert, "-module-", 384)):
        cache = tmp_path / graph.strip("-")
        runner = onnx_exact(model, cache, threads=1)
        assert [p.name for p in (cache / "onnx").glob(f"*{graph}*.onnx")], graph
        assert runner.max_width == max_width
        rows = rows_of(model, ["the film was great", "bad", "i loved it , not very boring at all", "a"])
        ids, attention = model.padded(rows)
        expected = model.torch_forward(ids, attention, "exact")
        np.testing.assert_allclose(runner(ids, attention), expected, atol=1e-5, rtol=0)


def test_fast_takes_the_exact_runner_where_it_has_no_half_precision(tiny: TextModel) -> None:
    calls: list[int] = []

    class Counting:
        name, max_width = "onnxruntime", 1 << 30

        def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
            calls.append(len(ids))
            return tiny.torch_forward(ids, attention, "exact")

    tiny.exact_runner = Counting()
    try:
        tiny.forward(rows_of(tiny, ["good", "not good at all"]), "fast")
    finally:
        tiny.exact_runner = None
    half_precision = tiny._model_for("fast") is not tiny.model  # bf16 on this CPU, or not
    assert calls == ([] if half_precision else [2])


def test_the_export_is_cached_and_a_damaged_one_is_replaced(tiny: TextModel, tmp_path: Path) -> None:
    onnx_exact(tiny, tmp_path, threads=1)
    (graph,) = (tmp_path / "onnx").glob("*.onnx")
    assert tiny.fingerprint in graph.name
    exported_at = graph.stat().st_mtime_ns
    onnx_exact(tiny, tmp_path, threads=1)
    assert graph.stat().st_mtime_ns == exported_at  # reused, not exported again
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [graph.name]  # no temporary files left

    graph.write_bytes(b"not a graph")
    with pytest.raises(ModelLoadError, match="could not open"):
        onnx_exact(tiny, tmp_path, threads=1)
    assert not graph.exists()  # dropped: the next start exports again
    onnx_exact(tiny, tmp_path, threads=1)
    assert graph.exists()


def test_a_graph_that_disagrees_with_torch_is_refused(tiny: TextModel) -> None:
    class Wrong:
        name = "onnxruntime"

        def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
            return tiny.torch_forward(ids, attention, "exact") + 1e-3

    with pytest.raises(ModelLoadError, match="differs from torch"):
        _check(tiny, Wrong())


def wait_for_backend(service: ClarionService, backend: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while service.status().exact_backend != backend:
        assert time.monotonic() < deadline, f"still {service.status().exact_backend}"
        time.sleep(0.1)


def test_the_service_serves_with_torch_and_moves_to_onnxruntime(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = Settings(model_dir=str(tiny_model_dir), model_cache_dir=str(tmp_path), torch_threads=1)
    assert settings.exact_backend == "auto"
    service = ClarionService(settings)
    service.load()
    assert service.status().status == "healthy"  # healthy before the export is done
    before = service.classify(["the film was great"])[0]
    wait_for_backend(service, "onnxruntime")
    after = service.classify(["the film was great"])[0]
    for a, b in zip(before.prediction, after.prediction, strict=True):
        assert a.label == b.label and abs(a.score - b.score) < 1e-5
    service.engine.stop()


def test_torch_only_when_asked_and_onnxruntime_before_healthy(tiny_model_dir: Path, tmp_path: Path) -> None:
    torch_only = ClarionService(
        Settings(model_dir=str(tiny_model_dir), model_cache_dir=str(tmp_path), exact_backend="torch")
    )
    torch_only.load()
    time.sleep(1)
    assert torch_only.status().exact_backend == "torch"
    torch_only.engine.stop()
    asked = ClarionService(
        Settings(model_dir=str(tiny_model_dir), model_cache_dir=str(tmp_path), exact_backend="onnxruntime")
    )
    asked.load()
    assert asked.status().exact_backend == "onnxruntime"  # part of loading, not after it
    asked.engine.stop()


def test_an_export_failure_leaves_torch_serving(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")  # the export cannot be written
    service = ClarionService(Settings(model_dir=str(tiny_model_dir), model_cache_dir=str(blocked)))
    with caplog.at_level(logging.WARNING):
        service.load()
        deadline = time.monotonic() + 30
        while "exact passes stay on torch" not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert service.status().exact_backend == "torch"
    assert service.classify(["good"])[0].prediction
    service.engine.stop()
