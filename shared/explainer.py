"""Explain texts: SHAP Partition values per token, computed with batched, unpadded forward passes.

`explain_texts` is the one implementation of "explain these texts": the HTTP path in single-process
mode and the Celery task both call it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.errors import ExplanationTimeout, InvalidRequest
from shared.model import EncodedText, TextModel
from shared.owen import OwenSteps, owen_values, text_clustering, token_segments
from shared.results import Explanation
from shared.schemas import ExplainOptions


@dataclass(frozen=True)
class _PassSize:
    rows: int  # SHAP's default batch size on this device, and the rows per forward pass
    tokens: int  # rows x tokens per pass


# On CPU the per-row cost is lowest around 1-3k tokens per pass (measured on minilm: 8 rows of 256
# tokens beat 64 by ~20 %); GPUs want far bigger passes.
_CPU = _PassSize(rows=64, tokens=2048)
_GPU = _PassSize(rows=256, tokens=65536)


def _pass_size(model: TextModel) -> _PassSize:
    return _GPU if model.device.type == "cuda" else _CPU


def default_explain_batch_size(model: TextModel, configured: int | None) -> int:
    """Rows per forward pass: what the device runs best, unless the operator set EXPLAIN_BATCH_SIZE."""
    return configured if configured is not None else _pass_size(model).rows


@dataclass
class _Job:
    """One text being explained: its encoding, its kept positions and its running Owen recursion."""

    encoded: EncodedText
    keep: np.ndarray
    clustering: np.ndarray
    label_indexes: list[int]
    steps: OwenSteps | None = None
    pending: np.ndarray | None = None
    values: np.ndarray | None = None
    evaluations: int = 0

    def masked_ids(self, masks: np.ndarray, mask_token_id: int) -> list[np.ndarray]:
        kept = masks | self.keep
        return list(np.where(kept, self.encoded.ids, mask_token_id))


def explain_texts(
    model: TextModel, texts: Sequence[str], options: ExplainOptions, batch_size: int
) -> list[Explanation]:
    return explain_encoded(model, model.encode(texts), options, batch_size)


def explain_encoded(
    model: TextModel,
    encoded: Sequence[EncodedText],
    options: ExplainOptions,
    batch_size: int,
    deadline: float | None = None,
) -> list[Explanation]:
    """Explain every text; the masks of all texts are evaluated together, round by round.

    `deadline` (a `time.monotonic()` value) stops the work between rounds with ExplanationTimeout.
    """
    jobs = [_new_job(model, e) for e in encoded]
    n = len(jobs)
    none = [np.zeros(len(j.encoded.ids), dtype=bool) for j in jobs]
    rows = [j.masked_ids(m[None, :], model.mask_token_id)[0] for j, m in zip(jobs, none, strict=True)]
    rows += [j.encoded.ids for j in jobs]
    end_logits = _logits(model, rows, options, batch_size)
    ends = model.outputs(end_logits, options.output)
    f00, f11 = ends[:n], ends[n:]
    probabilities = model.outputs(end_logits[n:], "probability")
    for i, job in enumerate(jobs):
        job.label_indexes = _label_indexes(model, options, probabilities[i])
        idx = job.label_indexes
        rng = np.random.RandomState(options.seed)
        job.steps = owen_values(job.clustering, f00[i][idx], f11[i][idx], options.max_evals, batch_size, rng)
        _advance(job, None)

    while active := [j for j in jobs if j.pending is not None]:
        if deadline is not None and time.monotonic() > deadline:
            raise ExplanationTimeout(
                "the explanation did not finish within the request timeout; ask for fewer max_evals "
                "or fewer texts, or submit it as a job (POST /explanations with a broker configured)"
            )
        rows, owners = [], []
        for job in active:
            assert job.pending is not None
            ids = job.masked_ids(job.pending, model.mask_token_id)
            rows += ids
            owners.append(len(ids))
        outputs = _outputs(model, rows, options, batch_size)
        start = 0
        for job, count in zip(active, owners, strict=True):
            _advance(job, outputs[start : start + count][:, job.label_indexes])
            start += count

    return [_explanation(model, job, options, f00[i], f11[i]) for i, job in enumerate(jobs)]


def _logits(model: TextModel, rows: list[np.ndarray], options: ExplainOptions, batch_size: int) -> np.ndarray:
    """One call for the rows of every text in the round; passes never mix lengths (no padding)."""
    size = _pass_size(model)
    return model.logits(
        rows, max(batch_size, size.rows), options.precision, same_length_batches=True, max_tokens=size.tokens
    )


def _outputs(
    model: TextModel, rows: list[np.ndarray], options: ExplainOptions, batch_size: int
) -> np.ndarray:
    return model.outputs(_logits(model, rows, options, batch_size), options.output)


def _advance(job: _Job, outputs: np.ndarray | None) -> None:
    assert job.steps is not None
    try:
        job.pending = job.steps.send(outputs)  # type: ignore[arg-type]
    except StopIteration as done:
        job.values, job.evaluations = done.value
        job.pending = None


def _new_job(model: TextModel, encoded: EncodedText) -> _Job:
    length = len(encoded.ids)
    keep = np.zeros(length, dtype=bool)
    keep[: model.keep_prefix] = True
    if model.keep_suffix:
        keep[length - model.keep_suffix :] = True
    segments = token_segments(encoded.text, encoded.offsets)
    clustering = text_clustering(segments, model.tokenizer.sep_token) if length > 1 else np.zeros((0, 4))
    return _Job(encoded=encoded, keep=keep, clustering=clustering, label_indexes=[])


def _label_indexes(model: TextModel, options: ExplainOptions, probabilities: np.ndarray) -> list[int]:
    if options.labels == "all":
        return list(range(len(model.labels)))
    if options.labels == "predicted":
        if model.multi_label:
            chosen = [i for i, p in enumerate(probabilities) if p >= 0.5]
            return chosen or [int(np.argmax(probabilities))]
        return [int(np.argmax(probabilities))]
    unknown = [label for label in options.labels if label not in model.labels]
    if unknown:
        raise InvalidRequest(f"parameters.labels: unknown label(s) {unknown}; the model has {model.labels}")
    return [model.labels.index(label) for label in dict.fromkeys(options.labels)]


def _explanation(
    model: TextModel, job: _Job, options: ExplainOptions, f00: np.ndarray, f11: np.ndarray
) -> Explanation:
    text, offsets, ids = job.encoded.text, job.encoded.offsets, job.encoded.ids
    if job.values is None:  # a single token: no tree to walk, the whole difference is its credit
        job.values = (f11 - f00)[job.label_indexes][None, :]
        job.evaluations = 2
    tokens, spans = [], []
    end_of_text = max((end for _, end in offsets), default=0)
    for i, (start, end) in enumerate(offsets):
        if job.keep[i]:  # boundary tokens ([CLS], [SEP]): shown by name, at the text's edge
            tokens.append(model.tokenizer.convert_ids_to_tokens(int(ids[i])))
            edge = 0 if i < model.keep_prefix else end_of_text
            spans.append((edge, edge))
        else:
            tokens.append(text[start:end])
            spans.append((start, end))
    labels = [model.labels[i] for i in job.label_indexes]
    return Explanation(
        tokens=tokens,
        offsets=spans,
        labels=labels,
        values={label: [float(v) for v in job.values[:, k]] for k, label in enumerate(labels)},
        base_values={label: float(f00[i]) for label, i in zip(labels, job.label_indexes, strict=True)},
        model_output={label: float(f11[i]) for label, i in zip(labels, job.label_indexes, strict=True)},
        output=options.output,
        max_evals=options.max_evals,
        evaluations=job.evaluations,
        seed=options.seed,
        precision=options.precision,
        truncated=job.encoded.truncated,
    )
