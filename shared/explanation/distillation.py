"""Training the amortized explainer (shared/explanation/amortized.py) on exact token values.

A copy of the served classifier's encoder, with a linear head per token, is fine-tuned end to end to
predict each token's exact SHAP value for every label. The additivity shift that serving applies
(every token of a text moved by the same amount so that the values sum to output - base) is part
of the network in training too, so it learns the values' shape, not their sum, which serving fixes
anyway.

The loss is measured mostly on words, each text's error relative to the size of its own values:
what the explainer is judged by is the order of a text's words (the median over texts of a
word-level Spearman), and a text the model is unsure of has small values that a plain squared
error would all but ignore, while it counts as much as any in that median. A token-level squared
error (half the weight) keeps the tokens within a word apart. On 684 minilm-sst2 texts, 6 epochs,
the held-out median Spearman went from 0.70 (token error alone) to 0.74; a ridge head over the
frozen last layer had reached 0.58 (docs/engine.md, "The amortized explainer"). A third term, one
minus each text's Pearson correlation of predicted and exact word values, targets that order
directly: on the 2,382-text corpus it raised the held-out median from 0.791 to 0.818, and the
bench's reviews from 0.532 to 0.668 (the same labels, seed and epochs).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.runtime.model import TextModel

# Four times the usual fine-tuning rate of a BERT-size encoder: at 5e-5 the copy fitted its own
# training texts little (their median Spearman against its labels 0.83, held-out texts' 0.80); at
# 2e-4 they reached 0.87, and the bench's reviews 0.34 against 0.22 (two seeds, docs/engine.md); at
# 5e-4 held-out texts lost.
ENCODER_LEARNING_RATE = 2e-4
HEAD_LEARNING_RATE = 1e-3  # the head starts at zero and has far less to learn
WARMUP = 0.06  # of the steps: the learning rate rises linearly, then falls linearly to 0
BATCH = 16
BAND = 64  # tokens: a batch's texts are within one band of lengths (see _batches)
TOKEN_WEIGHT = 0.5  # the token-level error's weight beside the word-level one
CORRELATION_WEIGHT = 1.0  # the word-order term's weight (1 - each text's Pearson correlation)
FLOOR = 0.05  # of the values' scale: the smallest value size a text's word error is measured against


@dataclass(frozen=True)
class Example:
    """One text's training example: its token ids, which tokens are players (not kept boundary
    tokens), their exact values (tokens x labels), each label's output - base value, and each
    token's word (-1: none)."""

    ids: np.ndarray
    playing: np.ndarray
    values: np.ndarray
    delta: np.ndarray
    words: np.ndarray


@dataclass(frozen=True)
class Trained:
    encoder: Any
    weights: np.ndarray
    bias: np.ndarray
    scale: float
    losses: list[float]  # each epoch's mean training loss (squared error over the values' scale)


def train(
    model: TextModel,
    examples: list[Example],
    epochs: int,
    seed: int,
    report: Callable[[str], None] = lambda _: None,
    learning_rate: float = ENCODER_LEARNING_RATE,
) -> Trained:
    """Fine-tune a copy of `model`'s encoder with a per-token head on `examples`."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoder = copy.deepcopy(model.model.base_model).float().to(model.device).train()
    labels = len(model.labels)
    head = torch.nn.Linear(encoder.config.hidden_size, labels).to(model.device)
    torch.nn.init.zeros_(head.weight)  # an untrained head predicts the even split of output - base
    torch.nn.init.zeros_(head.bias)
    scale = float(np.std(np.concatenate([e.values[e.playing].ravel() for e in examples]))) or 1.0
    optimizer = torch.optim.AdamW(
        [
            {"params": encoder.parameters(), "lr": learning_rate},
            {"params": head.parameters(), "lr": HEAD_LEARNING_RATE},
        ],
        weight_decay=0.01,
    )
    steps = epochs * len(_batches(examples, np.random.default_rng(seed), model.pads))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, step / max(1.0, WARMUP * steps)) * max(0.0, 1 - step / steps)
    )
    losses = []
    for epoch in range(epochs):
        started, total = time.perf_counter(), 0.0
        for indexes in _batches(examples, rng, model.pads):
            batch = [examples[i] for i in indexes]
            ids, attention, playing, values, delta, pool = (
                torch.from_numpy(a).to(model.device) for a in _padded(model, batch, labels)
            )
            hidden = encoder(input_ids=ids, attention_mask=attention).last_hidden_state
            predicted = additive(head(hidden) * scale, playing, delta)
            # Word values and which words are there, once for both word-level terms.
            predicted_words, exact_words, present = pool @ predicted, pool @ values, pool.sum(2).gt(0)
            loss = (
                word_loss(predicted_words, exact_words, present.sum(1).clamp(min=1), scale)
                + TOKEN_WEIGHT * (((predicted - values) / scale) ** 2).sum() / (playing.sum() * labels)
                + CORRELATION_WEIGHT * correlation_loss(predicted_words, exact_words, present)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(examples))
        report(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - started:.0f} s)")
    encoder.eval()
    weights = head.weight.detach().cpu().double().numpy().T
    return Trained(encoder, weights, head.bias.detach().cpu().double().numpy(), scale, losses)


def word_loss(predicted: Any, exact: Any, words: Any, scale: float) -> Any:
    """Word values (batch x words x labels; padding words all zero; `words`: each text's count):
    each text's mean squared error over its own values' mean square (plus a floor, 5 % of the
    corpus's scale, so that a text with nearly no values is not magnified without bound), averaged
    over the texts."""
    error = ((predicted - exact) ** 2).sum((1, 2)) / words
    size = (exact**2).sum((1, 2)) / words + (FLOOR * scale) ** 2
    return (error / size).mean()


def correlation_loss(predicted: Any, exact: Any, present: Any) -> Any:
    """1 - each text's Pearson correlation of predicted and exact word values, per label, over its
    words (`present`: batch x words), averaged: the order of a text's words is what it is judged by."""
    mask = present.float()[..., None]
    count = mask.sum(1, keepdim=True).clamp(min=1)
    p = (predicted - (predicted * mask).sum(1, keepdim=True) / count) * mask
    e = (exact - (exact * mask).sum(1, keepdim=True) / count) * mask
    r = (p * e).sum(1) / ((p**2).sum(1) * (e**2).sum(1) + 1e-12).sqrt()
    return (1 - r).mean()


def additive(values: Any, playing: Any, delta: Any) -> Any:
    """Token values (batch x tokens x labels) shifted evenly over each text's players so that they
    sum to its output - base (`delta`, batch x labels); zero off the players. Serving's shift
    (explain_amortized), in torch."""
    values = values * playing[..., None]
    players = playing.sum(1, keepdim=True).clamp(min=1)[..., None]
    shift = (delta[:, None, :] - values.sum(1, keepdim=True)) / players
    return (values + shift) * playing[..., None]


def _batches(examples: list[Example], rng: np.random.Generator, pads: bool) -> list[np.ndarray]:
    """An epoch's batches of BATCH examples, in a random order. Where rows are padded, each batch
    draws from one band of lengths (BAND tokens wide), so that a document never pads a batch of
    sentences to its length (a corpus with 3 % documents would otherwise cost about five times as
    much per epoch); where they are not (a decoder without a pad id), each batch is of one length."""
    key = (lambda i: len(examples[i].ids) // BAND) if pads else (lambda i: len(examples[i].ids))
    by_length: dict[int, list[int]] = {}
    for i in rng.permutation(len(examples)):
        by_length.setdefault(key(int(i)), []).append(int(i))
    batches = [
        np.array(same[start : start + BATCH])
        for same in by_length.values()
        for start in range(0, len(same), BATCH)
    ]
    return [batches[i] for i in rng.permutation(len(batches))]


def _padded(model: TextModel, batch: list[Example], labels: int) -> tuple[np.ndarray, ...]:
    ids, attention = model.padded([e.ids for e in batch])
    width = ids.shape[1]
    playing = np.zeros((len(batch), width), dtype=np.float32)
    values = np.zeros((len(batch), width, labels), dtype=np.float32)
    for j, example in enumerate(batch):
        playing[j, : len(example.ids)] = example.playing
        values[j, : len(example.ids)] = example.values
    delta = np.array([e.delta for e in batch], dtype=np.float32)
    # pool[j] @ token values = word values: a word's value is the sum of its tokens'
    pool = np.zeros((len(batch), max(int(e.words.max(initial=-1)) + 1 for e in batch), width), np.float32)
    for j, example in enumerate(batch):
        tokens = np.nonzero(example.words >= 0)[0]
        pool[j, example.words[tokens], tokens] = 1.0
    return ids, attention, playing, values, delta, pool
