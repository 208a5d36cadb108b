"""Faithfulness of an explanation: ERASER's comprehensiveness and sufficiency (DeYoung et al., 2020).

For each explained label, rank the units by their attribution to it (highest first) and, for each
bin of the top 1, 5, 10, 20 and 50 % of the units:
- comprehensiveness: the drop in the label's score when those units are deleted from the text;
- sufficiency: the drop when only those units are kept.
Each measure is its AOPC: the mean over the bins (as ERASER's scorer averages its thresholds).
A faithful ranking has a high comprehensiveness (deleting what it ranks first hurts) and a low
sufficiency (what it ranks first is enough).

Units are *deleted*, their tokens removed from the row (not masked): the texts ERASER and ferret
score are the text without the rationale. A bin holds ceil(fraction x units) units, so every bin of
a short text deletes at least one; bins that pick the same units are scored once and still count
in the mean. The scores are the head's own (softmax, sigmoid, or a regression head's value),
whatever `output` the attributions are in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BINS = (0.01, 0.05, 0.10, 0.20, 0.50)


@dataclass(frozen=True)
class Deletion:
    """One label's bins over one text: for each bin, the token positions each measure keeps."""

    label_index: int
    comprehensive: list[np.ndarray]  # positions kept when the bin's top units are deleted
    sufficient: list[np.ndarray]  # positions kept when only the bin's top units (and boundaries) stay


def unit_counts(units: int) -> list[int]:
    """Units in each bin: ceil(fraction x units), at least one, at most all."""
    return [min(units, max(1, math.ceil(fraction * units))) for fraction in BINS]


def deletions(
    values: np.ndarray, label_indexes: list[int], player_of_token: np.ndarray, keep: np.ndarray
) -> list[Deletion]:
    """The kept positions of every bin, for each explained label. `values`: players x labels;
    `player_of_token`: each token's player (-1 for one always kept); `keep`: boundary tokens, which
    every row keeps. Players with no token of their own (token granularity's boundary tokens) are
    not ranked."""
    playing = ~keep & (player_of_token >= 0)
    ranked_players = np.unique(player_of_token[playing])
    counts = unit_counts(len(ranked_players))
    out = []
    for column, label_index in enumerate(label_indexes):
        order = ranked_players[np.argsort(-values[ranked_players, column], kind="stable")]
        comprehensive, sufficient = [], []
        for count in counts:
            top = np.isin(player_of_token, order[:count]) & playing
            comprehensive.append(np.flatnonzero(~top))
            sufficient.append(np.flatnonzero(top | ~playing))
        out.append(Deletion(label_index, comprehensive, sufficient))
    return out


def aopc(full: float, deleted: list[float]) -> float:
    """The mean drop from the full text's score over the bins."""
    return float(np.mean([full - score for score in deleted]))
