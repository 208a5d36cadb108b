"""Classification: every label scored, sorted, softmax or sigmoid, batched, truncation reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.classifier import classify
from shared.model import load_text_model
from shared.settings import Settings


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return load_text_model(Settings(model_dir=str(tiny_model_dir), torch_threads=1))


def test_every_label_scored_sorted_and_summing_to_one(tiny) -> None:
    (result,) = classify(tiny, ["the film was great"], 8)
    assert sorted(s.label for s in result.scores) == ["negative", "neutral", "positive"]
    scores = [s.score for s in result.scores]
    assert scores == sorted(scores, reverse=True)
    assert abs(sum(scores) - 1) < 1e-6


def test_batched_scores_equal_one_by_one(tiny) -> None:
    texts = [
        "good",
        "the plot was boring and the acting awful",
        "i loved it",
        "not very good at all , really",
    ]
    together = classify(tiny, texts, 3)
    for text, joint in zip(texts, together, strict=True):
        (alone,) = classify(tiny, [text], 1)
        for a, b in zip(joint.scores, alone.scores, strict=True):
            assert a.label == b.label and abs(a.score - b.score) < 1e-5


def test_scores_match_a_direct_forward_pass(tiny) -> None:
    text = "the acting was superb"
    (result,) = classify(tiny, [text], 8)
    with torch.inference_mode():
        logits = tiny.model(**tiny.tokenizer([text], return_tensors="pt")).logits[0].numpy()
    expected = np.exp(logits) / np.exp(logits).sum()
    by_label = {s.label: s.score for s in result.scores}
    for i, label in enumerate(tiny.labels):
        assert abs(by_label[label] - expected[i]) < 1e-5


def test_multi_label_uses_sigmoid(tiny_multilabel_dir: Path) -> None:
    model = load_text_model(Settings(model_dir=str(tiny_multilabel_dir), torch_threads=1))
    assert model.multi_label
    (result,) = classify(model, ["you are awful"], 8)
    with torch.inference_mode():
        logits = model.model(**model.tokenizer(["you are awful"], return_tensors="pt")).logits[0].numpy()
    by_label = {s.label: s.score for s in result.scores}
    for i, label in enumerate(model.labels):
        assert abs(by_label[label] - 1 / (1 + np.exp(-logits[i]))) < 1e-5


def test_truncation_is_reported(tiny) -> None:
    short, long = classify(tiny, ["good", "good " * 500], 8)
    assert short.truncated is False
    assert long.truncated is True
