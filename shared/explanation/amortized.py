"""An amortized explainer: a model's exact SHAP values, predicted in one forward pass.

After Yang et al. (ACL 2023): a trained copy of the served classifier's encoder with a per-token
linear head, fitted to Clarion's exact token values (`clarion distill`: shared/cli/distill.py,
training in shared/explanation/distillation.py). Serving costs one pass of the copy for the values,
one row for the base value (the text with every unit masked) and the row the classification ran
anyway.

Additivity is enforced, in training as in serving: each label's predicted values are shifted by the
same amount per token, so that base value + sum = output (`additivity_correction` in
explanation_parameters is the largest shift a unit received over the labels). Units of any
granularity are sums of their tokens' values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
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

# 1: a ridge head over the frozen classifier's last layer (refused: its held-out Spearman was 0.58).
ARTIFACT_VERSION = 2
META = "amortized.json"
HEAD = "head.npz"  # the per-token head: weights (hidden x labels), bias, and the values' scale
ENCODER = "encoder"  # the trained copy of the classifier's encoder (transformers' save_pretrained)


@dataclass(frozen=True)
class AmortizedExplainer:
    """A trained artifact: the encoder copy, its head, and what it was trained and validated on."""

    encoder: Any  # a transformers base model (no classification head), fp32, in eval mode
    weights: np.ndarray  # hidden x labels
    bias: np.ndarray  # labels
    scale: float  # the head predicts values / scale
    meta: dict[str, Any]

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the weights and the metadata, made once, when first asked for: explanation
        cache keys name the artifact by its content, so a changed AMORTIZED_EXPLAINER misses and the
        same artifact elsewhere hits. (distill builds an explainer to validate it, then another to
        save with its figures: neither is hashed.)"""
        digest = hashlib.sha256(json.dumps(self.meta, sort_keys=True, default=str).encode())
        for array in (self.weights, self.bias, np.array([self.scale])):
            digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
        for name, tensor in sorted(self.encoder.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().float().numpy().tobytes())
        return digest.hexdigest()

    @property
    def validation(self) -> dict[str, Any]:
        return self.meta["validation"]

    def check(self, options: ExplainOptions) -> None:
        """InvalidRequest for what this artifact does not predict (windows, another output than it
        learnt): called before a job is queued, and again when it runs."""
        if options.long_text == "windows":
            raise InvalidRequest(
                'precision "amortized" explains texts up to the model\'s length (no windows)'
            )
        learnt = self.meta.get("output", "probability")
        if options.output != learnt:
            raise InvalidRequest(f'precision "amortized" learnt values of the {learnt} (output "{learnt}")')

    def token_values(self, model: TextModel, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Each row's predicted token values (tokens x labels), before the additivity shift."""
        states = model.token_states(rows, self.encoder)
        return [(hidden.astype(np.float64) @ self.weights + self.bias) * self.scale for hidden in states]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(directory / ENCODER)
        np.savez(directory / HEAD, weights=self.weights, bias=self.bias, scale=np.array(self.scale))
        (directory / META).write_text(json.dumps(self.meta, indent=1) + "\n", encoding="utf-8")


class AmortizedUnavailable(InvalidRequest):
    """precision "amortized" was asked for where no usable artifact is loaded (a 400)."""


def load_amortized(directory: str, model: TextModel, min_spearman: float) -> AmortizedExplainer:
    """The artifact in `directory`, refused (AmortizedUnavailable) when it is missing or damaged,
    trained for another model (its fingerprint), or weaker than `min_spearman` on its held-out texts."""
    folder = Path(directory)
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AmortizedUnavailable(f"AMORTIZED_EXPLAINER={directory}: no usable artifact ({exc})") from None
    if meta.get("version") != ARTIFACT_VERSION:
        raise AmortizedUnavailable(
            f"AMORTIZED_EXPLAINER={directory}: artifact version {meta.get('version')}, this server reads "
            f"{ARTIFACT_VERSION}: distill it again (clarion distill, resumed from its records.jsonl)"
        )
    if meta.get("model_fingerprint") != model.fingerprint:
        raise AmortizedUnavailable(
            f"AMORTIZED_EXPLAINER={directory} was trained for another model ({meta.get('model_id')}, "
            f"fingerprint {meta.get('model_fingerprint')}); this one is {model.model_id} "
            f"({model.fingerprint})"
        )
    spearman = float(meta["validation"]["spearman_median"])
    if not spearman >= min_spearman:
        raise AmortizedUnavailable(
            f"AMORTIZED_EXPLAINER={directory} is refused: its held-out Spearman against exact is "
            f"{spearman:.3f}, below AMORTIZED_MIN_SPEARMAN ({min_spearman})"
        )
    try:
        from transformers import AutoModel

        with np.load(folder / HEAD) as data:
            weights, bias = np.asarray(data["weights"], np.float64), np.asarray(data["bias"], np.float64)
            scale = float(data["scale"])
        encoder = AutoModel.from_pretrained(folder / ENCODER, dtype="float32").to(model.device).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise AmortizedUnavailable(f"AMORTIZED_EXPLAINER={directory}: no usable artifact ({exc})") from None
    if weights.shape != (encoder.config.hidden_size, len(model.labels)) or bias.shape != (len(model.labels),):
        raise AmortizedUnavailable(
            f"AMORTIZED_EXPLAINER={directory}: a head of shape {weights.shape} for {len(model.labels)} labels"
        )
    return AmortizedExplainer(encoder, weights, bias, scale, meta)


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
    explainer.check(options)
    model = engine.model
    requested = requested_label_indexes(model.labels, options)
    games = [new_game(model, e, options) for e in encoded]
    none = [np.zeros((1, game.players), dtype=bool) for game in games]  # every unit masked: the base value
    # one row each: amortized explains single texts without windows
    masked = [game.masked_documents(mask, model)[0][0] for game, mask in zip(games, none, strict=True)]
    future = engine.submit(masked, EXPLAIN, "exact", ticket or Ticket())
    predicted = explainer.token_values(model, [e.ids for e in encoded])
    base_logits = future.result()
    out = []
    for index, (game, text) in enumerate(zip(games, encoded, strict=True)):
        output = model.outputs(unmasked[index][None], options.output)[0]
        base = model.outputs(base_logits[index][None], options.output)[0]
        labels = requested or predicted_label_indexes(
            model.multi_label, model.outputs(unmasked[index][None], "probability")[0]
        )
        playing = ~game.keep & (game.player_of_token >= 0)
        tokens = predicted[index][:, labels]
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
