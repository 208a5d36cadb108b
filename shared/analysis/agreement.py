"""How closely one attribution of a text's units agrees with another (fast or amortized against exact)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranking_agreement(
    reference: Sequence[float], other: Sequence[float], k: int = 5
) -> tuple[float | None, float]:
    """Spearman's rank correlation (None for fewer than 3 units, where it says nothing) and the share
    of the reference's top-k units that the other also ranks in its top k."""
    from scipy.stats import spearmanr

    a, b = np.asarray(reference, dtype=float), np.asarray(other, dtype=float)
    spearman = float(spearmanr(a, b).statistic) if len(a) > 2 else None
    top = min(k, len(a))
    overlap = len(set(np.argsort(-a)[:top]) & set(np.argsort(-b)[:top])) / top if top else 1.0
    return spearman, overlap
