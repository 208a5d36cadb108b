"""Exact passes on a CPU through onnxruntime: the same weights exported to ONNX, faster per row.

A BERT classifier (minilm) is exported as its own graph (`_bert_logits`), not as transformers' module:
- attention is the eager formula with an additive mask. transformers' SDPA attention exports to a
  graph that onnxruntime runs slower the longer the rows;
- the last layer runs for the [CLS] position only: the logits read nothing else from it (the
  pooler takes [CLS]), so the other positions' queries, attention, feed-forward and layer norms
  there are skipped; keys and values still come from every position.
Same logits as torch (to ~4e-7; `_check` below refuses a graph off by more than TOLERANCE), faster
per row at every length measured: see `OnnxExact`. Other architectures are exported from
transformers' module as they are, and their passes wider than 384 tokens stay on torch. torch stays
the reference, the GPU path and the half-precision path.

Exporting takes about 2 s for minilm, so the graph is cached under MODEL_CACHE_DIR, named by the
model's fingerprint, the graph's kind and the torch and onnxruntime versions, and written atomically
(several processes may export at once; the last rename wins with the same bytes). An exported graph
is checked against torch before it is used.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ModelLoadError
from shared.model import TextModel

log = logging.getLogger(__name__)

OPSET = 17
# Largest logit difference to torch's accepted on the check rows (measured: ~3e-6 on minilm).
TOLERANCE = 1e-4


class OnnxExact:
    """Runs one padded pass (ids, attention) through an onnxruntime session; returns float32 logits.

    Passes wider than `max_width` tokens stay on torch. Measured per row on this 2-core CPU (AVX2,
    2 threads, onnxruntime 1.32, torch 2.13, minilm; backends alternated in blocks of 3 timed passes
    after an untimed one, so that no runtime's spinning threads slow the next; 10 rounds, medians),
    against torch: the BERT graph 1.67x faster at 32 rows of 24 tokens, 1.42x at 2 rows of 270,
    1.35x at one row of 512; transformers' own export 1.43x, 0.98x and 0.77x, hence 384 for it."""

    name = "onnxruntime"

    def __init__(self, session: Any, max_width: int) -> None:
        self._session = session
        self.max_width = max_width

    def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        (logits,) = self._session.run(["logits"], {"input_ids": ids, "attention_mask": attention})
        return np.asarray(logits, dtype=np.float32)


def onnx_exact(model: TextModel, cache_dir: str | Path, threads: int) -> OnnxExact:
    """Export (or reuse the cached export of) `model`, open it, and check it against torch."""
    try:
        import onnxruntime
        import torch
    except ImportError as exc:
        raise ModelLoadError(f"onnxruntime backend unavailable: {exc}") from None
    if model.device.type != "cpu":
        raise ModelLoadError(f"the onnxruntime backend runs on CPU; this model is on {model.device}")
    started = time.perf_counter()
    bert = _is_bert_classifier(model.model)
    versions = f"torch{torch.__version__}-ort{onnxruntime.__version__}-opset{OPSET}"
    name = f"{model.fingerprint}-{'bert' if bert else 'module'}-{versions}.onnx"
    path = Path(cache_dir) / "onnx" / name.replace("+", "_")
    exported = not path.is_file()
    if exported:
        _export(model, path, bert)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a damaged cache file: drop it, so the next start exports again
        path.unlink(missing_ok=True)
        raise ModelLoadError(f"onnxruntime could not open {path.name}: {exc}") from None
    runner = OnnxExact(session, max_width=1 << 30 if bert else 384)
    _check(model, runner)
    log.info(
        "exact passes run on onnxruntime (%s in %.1fs)",
        "exported" if exported else "cached graph",
        time.perf_counter() - started,
    )
    return runner


def _export(model: TextModel, path: Path, bert: bool) -> None:
    import torch

    ids = torch.full((2, 8), int(model.pad_token_id), dtype=torch.int64)
    attention = torch.ones_like(ids)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise ModelLoadError(f"cannot write the ONNX export under {path.parent}: {exc}") from None
    try:
        # Tracing warns about every Python-level branch on a shape, the exporter about operators it
        # composes; _check tests the graph instead. (Filters, not catch_warnings: this runs in a
        # background thread, and catch_warnings is not thread-safe.)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx")
        module = _bert_logits(model.model) if bert else model.model
        with torch.inference_mode():
            torch.onnx.export(
                module,
                (),
                tmp,
                kwargs={"input_ids": ids, "attention_mask": attention},
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_axes={
                    "input_ids": {0: "rows", 1: "length"},
                    "attention_mask": {0: "rows", 1: "length"},
                    "logits": {0: "rows"},
                },
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: seconds, where dynamo takes far longer
            )
        os.replace(tmp, path)
    except Exception as exc:
        raise ModelLoadError(f"could not export {model.model_id} to ONNX: {exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _is_bert_classifier(classifier: Any) -> bool:
    """A BERT encoder whose logits read its last layer at [CLS] only (through the pooler)."""
    config = getattr(classifier, "config", None)
    return (
        type(classifier).__name__ == "BertForSequenceClassification"
        and getattr(classifier.bert, "pooler", None) is not None
        and not getattr(config, "is_decoder", False)
        and not getattr(config, "add_cross_attention", False)
    )


def _bert_logits(classifier: Any) -> Any:
    """A module computing `classifier`'s logits as the module docstring says, from its own layers."""
    import torch

    def layer_at(layer: Any, queries: Any, hidden: Any, mask: Any) -> Any:
        """One BertLayer (eval mode) for the positions in `queries`, attending over `hidden`."""
        attention = layer.attention.self
        heads, size = attention.num_attention_heads, attention.attention_head_size

        def split(x: Any) -> Any:
            return x.view(x.shape[0], x.shape[1], heads, size).transpose(1, 2)

        q, k = split(attention.query(queries)), split(attention.key(hidden))
        v = split(attention.value(hidden))
        scores = torch.matmul(q, k.transpose(2, 3)) * attention.scaling + mask
        context = torch.matmul(scores.softmax(-1), v).transpose(1, 2)
        context = context.reshape(queries.shape[0], queries.shape[1], heads * size)
        attended = layer.attention.output(context, queries)
        return layer.output(layer.intermediate(attended), attended)

    class BertLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            bert = self.classifier.bert
            hidden = bert.embeddings(input_ids=input_ids)
            blocked = 1.0 - attention_mask[:, None, None, :].to(hidden.dtype)
            mask = blocked * torch.finfo(hidden.dtype).min
            *inner, last = bert.encoder.layer
            for layer in inner:
                hidden = layer_at(layer, hidden, hidden, mask)
            hidden = layer_at(last, hidden[:, :1], hidden, mask)
            return self.classifier.classifier(bert.pooler(hidden))

    return BertLogits().eval()


def _check(model: TextModel, runner: OnnxExact) -> None:
    """The exported graph must give torch's logits at shapes other than the traced one, padded or not
    (tracing records Python-level branches as constants; these rows would show a wrong one)."""
    long, short = (e.ids for e in model.encode(["A check of the exported graph, once more.", "Short"]))
    for rows in ([long, short], [long] * 3):
        ids, attention = model.padded(rows)
        torch_logits = model.torch_forward(ids, attention, "exact")
        difference = float(np.max(np.abs(runner(ids, attention) - torch_logits)))
        if not difference <= TOLERANCE:
            raise ModelLoadError(f"ONNX export of {model.model_id} differs from torch by {difference:.1e}")
