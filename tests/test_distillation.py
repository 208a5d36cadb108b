"""The amortized explainer's training terms (shared/explanation/distillation.py), on hand-made word
values: what each term rewards, and what it ignores (padding words, the values' scale)."""

from __future__ import annotations

import pytest
import torch

from shared.explanation.distillation import additive, correlation_loss, word_loss

# Two texts, two labels: the first has four words, the second three and a padding word.
EXACT = torch.tensor(
    [
        [[0.9, -0.9], [0.1, -0.1], [-0.4, 0.4], [0.02, -0.02]],
        [[-2.0, 2.0], [0.5, -0.5], [0.3, -0.3], [0.0, 0.0]],
    ]
)
PRESENT = torch.tensor([[True, True, True, True], [True, True, True, False]])
WORDS = PRESENT.sum(1)


def test_the_correlation_term_rewards_exacts_order_whatever_the_values_scale() -> None:
    right = correlation_loss(EXACT, EXACT, PRESENT)
    assert float(right) == pytest.approx(0.0, abs=1e-6)
    assert float(correlation_loss(EXACT * 0.01 + 3.0, EXACT, PRESENT)) == pytest.approx(0.0, abs=1e-5)
    swapped = correlation_loss(EXACT[:, [2, 1, 0, 3]], EXACT, PRESENT)  # the two largest words swapped
    assert 0.0 < float(swapped) < float(correlation_loss(-EXACT, EXACT, PRESENT)) == pytest.approx(2.0)


def test_padding_words_do_not_count_in_the_correlation_term() -> None:
    predicted = EXACT * 0.5
    padded, exact_padded = predicted.clone(), EXACT.clone()
    padded[1, 3], exact_padded[1, 3] = torch.tensor([7.0, -7.0]), torch.tensor([-3.0, 3.0])
    assert correlation_loss(padded, exact_padded * PRESENT[..., None], PRESENT) == pytest.approx(
        float(correlation_loss(predicted, EXACT, PRESENT))
    )


def test_the_word_error_is_relative_to_each_texts_own_values() -> None:
    """A text with values a tenth the size, predicted as far off in proportion, costs as much: an
    unsure text's small values count in the median over texts, so they count in training."""
    halved = EXACT * 0.5
    large = word_loss(halved[:1], EXACT[:1], WORDS[:1], scale=1e-6)
    small = word_loss(halved[:1] * 0.1, EXACT[:1] * 0.1, WORDS[:1], scale=1e-6)
    assert float(large) == pytest.approx(0.25, rel=1e-4) and float(small) == pytest.approx(0.25, rel=1e-4)


def test_additive_values_sum_to_each_texts_output_less_base_on_its_players_alone() -> None:
    values = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [5.0, 5.0]]])
    playing = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is a kept boundary token
    delta = torch.tensor([[6.0, -1.0]])
    shifted = additive(values, playing, delta)
    assert torch.allclose(shifted.sum(1), delta)
    assert torch.equal(shifted[0, 2], torch.zeros(2))
    assert torch.allclose(shifted[0, 1] - shifted[0, 0], values[0, 1] - values[0, 0])  # shape kept
