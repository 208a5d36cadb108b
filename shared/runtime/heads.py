"""How a classification head's logits become outputs: its activation, and the scores it gives."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.kinds import Activation


def activation_of(config: Any) -> Activation:
    """The activation transformers' text-classification pipeline applies to this head: none for
    regression, sigmoid for multi-label or a single label, softmax otherwise."""
    if config.problem_type == "regression":
        return "none"
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def scores(logits: np.ndarray, activation: Activation) -> np.ndarray:
    """Softmax per row, element-wise sigmoid, or the logits as they are (float64)."""
    x = logits.astype(np.float64)
    if activation == "none":
        return x
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)
