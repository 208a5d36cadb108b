"""Classification: every label scored, sorted, softmax or sigmoid, batched, truncation reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.runtime.engine import Engine, PassLimits
from shared.serving.classifier import classify
from tests.support import start_engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    engine = start_engine(tiny_model_dir)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def tiny(engine: Engine):
    return engine.model


def test_every_label_scored_sorted_and_summing_to_one(engine, tiny) -> None:
    (result,) = classify(engine, ["the film was great"])
    assert sorted(s.label for s in result.prediction) == ["negative", "neutral", "positive"]
    scores = [s.score for s in result.prediction]
    assert scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1) < 1e-6


def test_batched_scores_equal_one_by_one(engine, tiny) -> None:
    texts = [
        "good",
        "the plot was boring and the acting awful",
        "i loved it",
        "not very good at all , really",
    ]
    small_passes = Engine(tiny, PassLimits(rows=3, tokens=64))
    together = classify(small_passes, texts)
    small_passes.stop()
    for text, joint in zip(texts, together, strict=True):
        (alone,) = classify(engine, [text])
        for a, b in zip(joint.prediction, alone.prediction, strict=True):
            assert a.label == b.label and abs(a.score - b.score) < 1e-5


def test_scores_match_a_direct_forward_pass(engine, tiny) -> None:
    text = "the acting was superb"
    (result,) = classify(engine, [text])
    with torch.inference_mode():
        logits = tiny.model(**tiny.tokenizer([text], return_tensors="pt")).logits[0].numpy()
    expected = np.exp(logits) / np.exp(logits).sum()
    by_label = {s.label: s.score for s in result.prediction}
    for i, label in enumerate(tiny.labels):
        assert abs(by_label[label] - expected[i]) < 1e-5


def test_multi_label_uses_sigmoid(tiny_multilabel_dir: Path) -> None:
    multi = start_engine(tiny_multilabel_dir)
    model = multi.model
    assert model.multi_label
    (result,) = classify(multi, ["you are awful"])
    multi.stop()
    with torch.inference_mode():
        logits = model.model(**model.tokenizer(["you are awful"], return_tensors="pt")).logits[0].numpy()
    by_label = {s.label: s.score for s in result.prediction}
    for i, label in enumerate(model.labels):
        assert abs(by_label[label] - 1 / (1 + np.exp(-logits[i]))) < 1e-5


def test_truncation_is_reported(engine, tiny) -> None:
    short, long = classify(engine, ["good", "good " * 500])
    assert short.truncated is False
    assert long.truncated is True


def test_half_precision_gpu_passes_are_padded_to_few_shapes() -> None:
    from shared.runtime.model import _shape_bucket

    assert _shape_bucket(1, 10, 512) == (1, 16)
    assert _shape_bucket(5, 17, 512) == (8, 32)
    assert _shape_bucket(256, 270, 512) == (256, 272)
    assert _shape_bucket(257, 33, 512) == (512, 48)
    assert _shape_bucket(3, 510, 512) == (4, 512)
    assert _shape_bucket(3, 513, 514) == (4, 514)  # never past the model's positions
    shapes = {_shape_bucket(rows, width, 512) for rows in range(1, 257) for width in range(1, 513)}
    assert len(shapes) == 9 * 32  # 131,072 shapes of pass become 288
