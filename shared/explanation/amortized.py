"""An amortized explainer: a model's exact SHAP values, predicted in one forward pass.

After Yang et al. (ACL 2023), who trained an encoder with a per-token linear head on sampled SHAP
values. Here the encoder is the served classifier's own, frozen: a token's features are its
last-layer state h and h * h0 (h0: the first token's, which the head reads), and each label's value
is a linear map of them, fitted by ridge regression on Clarion's exact token values (`clarion
distill`: shared/cli/distill.py). Serving costs one pass for the features, one row for the base
value (the text with every unit masked) and the row the classification ran anyway.

Additivity is enforced: each label's predicted values are shifted by the same amount per token, so
that base value + sum = output (`additivity_correction` in explanation_parameters is the largest
shift a unit received over the labels). Units of any granularity are sums of their tokens' values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import InvalidRequest
from shared.explanation.explainer import (
    new_game,
    predicted_label_indexes,
    requested_label_indexes,
    units_of,
)
from shared.io.results import Explanation
from shared.io.schemas import ExplainOptions
from shared.runtime.encoding import EncodedText
from shared.runtime.engine import EXPLAIN, Engine, Ticket
from shared.runtime.model import TextModel

ARTIFACT_VERSION = 1
META = "amortized.json"
WEIGHTS = "amortized.npz"


def token_features(model: TextModel, encoded: list[EncodedText]) -> list[np.ndarray]:
    """Each text's features (tokens x 2 hidden + 1): h, h * h0 and a constant."""
    states = model.token_states([e.ids for e in encoded])
    out = []
    for hidden in states:
        first = hidden[0]
        out.append(np.hstack([hidden, hidden * first, np.ones((len(hidden), 1), dtype=np.float32)]))
    return out


@dataclass(frozen=True)
class AmortizedExplainer:
    """A trained artifact: weights (features x labels) and what it was trained and validated on."""

    weights: np.ndarray
    meta: dict[str, Any]
    # A hash of the weights and the metadata, made once here: explanation cache keys name the artifact
    # by its content, so a changed AMORTIZED_EXPLAINER misses and the same artifact elsewhere hits.
    fingerprint: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        weights = np.ascontiguousarray(self.weights, dtype=np.float64)
        digest = hashlib.sha256(json.dumps(self.meta, sort_keys=True, default=str).encode())
        digest.update(str(weights.shape).encode())
        digest.update(weights.tobytes())
        object.__setattr__(self, "fingerprint", digest.hexdigest())

    @property
    def validation(self) -> dict[str, Any]:
        return self.meta["validation"]

    def token_values(self, features: np.ndarray) -> np.ndarray:
        return features.astype(np.float64) @ self.weights

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / WEIGHTS, weights=self.weights)
        (directory / META).write_text(json.dumps(self.meta, indent=1) + "\n", encoding="utf-8")


class AmortizedUnavailable(InvalidRequest):
    """precision "amortized" was asked for where no usable artifact is loaded (a 400)."""


def load_amortized(directory: str, model: TextModel, min_spearman: float) -> AmortizedExplainer:
    """The artifact in `directory`, refused (AmortizedUnavailable) when it is missing or damaged,
    trained for another model (its fingerprint), or weaker than `min_spearman` on its held-out texts."""
    folder = Path(directory)
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        with np.load(folder / WEIGHTS) as data:
            weights = np.asarray(data["weights"], dtype=np.float64)
    except (OSError, ValueError, KeyError) as exc:
        raise AmortizedUnavailable(f"AMORTIZED_EXPLAINER={directory}: no usable artifact ({exc})") from None
    if meta.get("version") != ARTIFACT_VERSION:
        raise AmortizedUnavailable(f"AMORTIZED_EXPLAINER={directory}: artifact version {meta.get('version')}")
    if meta.get("model_fingerprint") != model.fingerprint:
        raise AmortizedUnavailable(
            f"AMORTIZED_EXPLAINER={directory} was trained for another model ({meta.get('model_id')}, "
            f"fingerprint {meta.get('model_fingerprint')}); this one is {model.model_id} "
            f"({model.fingerprint})"
        )
    if weights.shape[1] != len(model.labels):
        raise AmortizedUnavailable(f"AMORTIZED_EXPLAINER={directory}: weights for {weights.shape[1]} labels")
    spearman = float(meta["validation"]["spearman_median"])
    if not spearman >= min_spearman:
        raise AmortizedUnavailable(
            f"AMORTIZED_EXPLAINER={directory} is refused: its held-out Spearman against exact is "
            f"{spearman:.3f}, below AMORTIZED_MIN_SPEARMAN ({min_spearman})"
        )
    return AmortizedExplainer(weights, meta)


def explain_amortized(
    engine: Engine,
    explainer: AmortizedExplainer,
    encoded: list[EncodedText],
    unmasked: list[np.ndarray],
    options: ExplainOptions,
    ticket: Ticket | None = None,
) -> list[Explanation]:
    """Explanations predicted by the artifact; `unmasked`: each text's logits as it is (they ran to
    classify it)."""
    if options.long_text == "windows":
        raise InvalidRequest('precision "amortized" explains texts up to the model\'s length (no windows)')
    model = engine.model
    requested = requested_label_indexes(model.labels, options)
    games = [new_game(model, e, options) for e in encoded]
    none = [np.zeros((1, game.players), dtype=bool) for game in games]  # every unit masked: the base value
    masked = [game.masked_ids(mask, model)[0] for game, mask in zip(games, none, strict=True)]
    future = engine.submit(masked, EXPLAIN, "exact", ticket or Ticket())
    features = token_features(model, encoded)
    base_logits = future.result()
    out = []
    for index, (game, text) in enumerate(zip(games, encoded, strict=True)):
        output = model.outputs(unmasked[index][None], options.output)[0]
        base = model.outputs(base_logits[index][None], options.output)[0]
        labels = requested or predicted_label_indexes(
            model.multi_label, model.outputs(unmasked[index][None], "probability")[0]
        )
        playing = ~game.keep & (game.player_of_token >= 0)
        tokens = explainer.token_values(features[index])[:, labels]
        tokens[~playing] = 0.0
        residual = (output[labels] - base[labels]) - tokens.sum(axis=0)
        shift = residual / max(1, int(playing.sum()))
        tokens[playing] += shift
        values = np.zeros((game.players, len(labels)))
        np.add.at(values, game.player_of_token[playing], tokens[playing])
        units, spans = units_of(model, game)
        names = [model.labels[i] for i in labels]
        out.append(
            Explanation(
                units=units,
                offsets=spans,
                granularity=options.granularity,
                labels=names,
                values={name: [float(v) for v in values[:, k]] for k, name in enumerate(names)},
                base_values={name: float(base[i]) for name, i in zip(names, labels, strict=True)},
                model_output={name: float(output[i]) for name, i in zip(names, labels, strict=True)},
                output=options.output,
                max_evals=options.max_evals,
                evaluations=2,
                seed=options.seed,
                precision="amortized",
                truncated=text.truncated,
                batch_size=options.batch_size,
                masking=options.masking,
                additivity_correction=float(np.max(np.abs(shift))) if len(shift) else 0.0,
                amortized_validation=explainer.validation,
            )
        )
    return out
