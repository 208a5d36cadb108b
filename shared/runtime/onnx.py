"""Exact passes on a CPU through onnxruntime: the same weights exported to ONNX, faster per row.

An encoder classifier whose head reads one position of the last layer (BERT's and ALBERT's pooler,
the `<s>` head of RoBERTa, XLM-R, CamemBERT and ELECTRA, DistilBERT's, DeBERTa-v2's context pooler,
ModernBERT with `classifier_pooling: "cls"`) is exported as Clarion's own graph (`GRAPHS`), built from
the model's own submodules rather than from transformers' module:
- attention is the eager formula with an additive mask. transformers' SDPA attention exports to a
  graph that onnxruntime runs slower the longer the rows;
- the last layer runs for position 0 only: the logits read nothing else from it, so the other
  positions' queries, attention, feed-forward and layer norms there are skipped; keys and values
  still come from every position.
A ModernBERT with mean pooling reads every position: its graph keeps the whole last layer. A decoder
classifier (GPT-2, Llama, Qwen2, Gemma: `DECODER_KINDS`) reads one position per row too, the last
token that is not the pad id (padding.py): its graph finds it as transformers' head does, runs causal
eager attention, and the last layer at that position only (the positions after it are masked there,
as causal attention masks them). Measured on this 2-core CPU (1 thread, 6 layers of width 256,
random weights, medians of 5 interleaved passes, other work on the machine): 1.16-1.20x faster than
transformers' export of the same model at 16 x 32 and 4 x 128 tokens, 1.28-1.31x at 2 x 500.
These graphs take passes up to EAGER_MAX_WIDTH tokens. Other architectures, and decoders with
sliding-window layers or rotary frequencies that change with the length, are exported from
transformers' module as they are (a decoder's without its key-value cache), and their passes wider
than 384 tokens stay on torch. torch stays the reference, the GPU path and the half-precision path.

Every graph is checked against torch before it is used (`_check`): short rows, padded or not, then
rows of the model's maximum length. A graph off on the short rows is refused; one off only on long
rows keeps the passes as narrow as the widest width it passes at, and wider ones stay on torch (logged).

Exporting takes about 2 s for minilm, so the graph is cached under MODEL_CACHE_DIR, named by the
model's fingerprint, the graph's kind and the torch and onnxruntime versions, and written atomically
(several processes may export at once; the last rename wins with the same bytes). Clarion's encoder
graphs then go through onnxruntime's transformer optimizer once (fusion.py): the fused graph runs the
exact passes where it gives the same logits and is faster, decided at the first start (ONNX_FUSION).
The decoder graphs are not tried: the optimizer's patterns are an encoder's.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ModelLoadError
from shared.runtime.fusion import fused_if_faster
from shared.runtime.model import TextModel
from shared.runtime.padding import NO_TOKEN, text_config

log = logging.getLogger(__name__)

OPSET = 17
# Part of the export's file name: raised when Clarion's graphs change, so that no start reuses an
# export of an earlier version (2: attention's scale divides, which the transformer optimizer fuses).
GRAPH_VERSION = 2
# The int8 graph of `fast`: weights quantized per output channel, symmetric int8 (part of its file name).
INT8_SCHEME = "qint8-perchannel"
# Largest difference in a score (a probability) between the int8 graph and torch's fp32 on the check
# rows that still serves `fast` (a broken quantization moves scores by far more).
INT8_TOLERANCE = 0.05
# Largest logit difference to torch's accepted on the check rows (measured: under 1e-6 on the tiny
# models of every family and on a roberta-base-sized one at 510 tokens, ~3e-6 on minilm).
TOLERANCE = 1e-5
# Narrower widths checked where rows of the widest pass a graph takes are off.
CHECK_WIDTHS = (64, 128, 256, 384, 512)
CHECK_TEXT = "A check of the exported graph, once more."
MODULE = "module"  # the graph's kind when it is transformers' module exported as it is
# Widest pass Clarion's graphs take (only ModernBERT's 8192 tokens reach past it): eager attention
# holds rows x heads x width x width scores (6.4 GB for two rows of 8192 at 12 heads, 100 MB at
# 1024), and checking a ModernBERT-base at 8192 would take minutes of CPU at every start. Wider
# passes stay on torch.
EAGER_MAX_WIDTH = 1024

# Classifiers whose head reads one position of the last layer, and the graph (in GRAPHS) each gets.
CLS_KINDS = {
    "BertForSequenceClassification": "cls-bert",
    "RobertaForSequenceClassification": "cls-roberta",
    "XLMRobertaForSequenceClassification": "cls-roberta",
    "CamembertForSequenceClassification": "cls-roberta",
    "ElectraForSequenceClassification": "cls-electra",
    "DistilBertForSequenceClassification": "cls-distilbert",
    "AlbertForSequenceClassification": "cls-albert",
    "DebertaV2ForSequenceClassification": "cls-deberta-v2",
    "ModernBertForSequenceClassification": "cls-modernbert",
}
# Decoder classifiers whose head reads one position per row (the last that is not the pad id), and
# the graph each gets: the last layer at that position only.
DECODER_KINDS = {
    "GPT2ForSequenceClassification": "last-gpt2",
    "LlamaForSequenceClassification": "last-llama",
    "Qwen2ForSequenceClassification": "last-llama",
    "GemmaForSequenceClassification": "last-llama",
}


class OnnxRunner:
    """Runs one padded pass (ids, attention) through an onnxruntime session; returns float32 logits.

    Passes wider than `max_width` tokens stay on torch. Measured per row on this 2-core CPU (AVX2,
    2 threads, onnxruntime 1.32, torch 2.13, minilm; backends alternated in blocks of 3 timed passes
    after an untimed one, so that no runtime's spinning threads slow the next; 10 rounds, medians),
    against torch: the BERT graph 1.67x faster at 32 rows of 24 tokens, 1.42x at 2 rows of 270,
    1.35x at one row of 512; transformers' own export 1.43x, 0.98x and 0.77x, hence 384 for it. On a
    roberta-base-sized RoBERTa (random weights, 5 rounds): the cls-roberta graph 1.10x faster than
    transformers' export at 32 rows of 24 tokens, 1.20x at 2 rows of 270 (1.48x, 1.33x than torch)."""

    def __init__(self, session: Any, max_width: int, name: str = "onnxruntime") -> None:
        self._session = session
        self.max_width = max_width
        self.name = name
        self.path: Path | None = None  # the graph's file
        self.export: Path | None = None  # the fp32 export it is (or was fused from): int8's source
        self.fused: dict[str, int] | None = None  # the fused graph's operators (fusion.py), if fused

    def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        (logits,) = self._session.run(["logits"], {"input_ids": ids, "attention_mask": attention})
        return np.asarray(logits, dtype=np.float32)


def onnx_exact(model: TextModel, cache_dir: str | Path, threads: int, fusion: str = "off") -> OnnxRunner:
    """Export (or reuse the cached export of) `model`, open it, and check it against torch; then its
    fused graph where `fusion` (ONNX_FUSION, which the service passes: auto, on or off; off by
    default) and fusion.py decide so."""
    try:
        import onnxruntime
        import torch
    except ImportError as exc:
        raise ModelLoadError(f"onnxruntime backend unavailable: {exc}") from None
    if model.device.type != "cpu":
        raise ModelLoadError(f"the onnxruntime backend runs on CPU; this model is on {model.device}")
    started = time.perf_counter()
    kind = _graph_kind(model.model)
    versions = f"torch{torch.__version__}-ort{onnxruntime.__version__}-opset{OPSET}-g{GRAPH_VERSION}"
    name = f"{model.fingerprint}-{kind}-{versions}.onnx"
    path = Path(cache_dir) / "onnx" / name.replace("+", "_")
    exported = not path.is_file()
    if exported:
        _export(model, path, kind)
    reopen = partial(_opened, model, max_width=384 if kind == MODULE else EAGER_MAX_WIDTH, threads=threads)
    runner = reopen(path)
    runner.export = path
    if kind != MODULE and kind not in DECODER_KINDS.values():  # the optimizer's patterns are an encoder's
        mode = fusion
        runner = fused_if_faster(model, runner, reopen, mode, threads)
    log.info(
        "exact passes run on onnxruntime (%s graph%s, %s in %.1fs)",
        kind,
        ", fused" if runner.fused else "",
        "exported" if exported else "cached",
        time.perf_counter() - started,
    )
    return runner


def _opened(model: TextModel, path: Path, max_width: int, threads: int) -> OnnxRunner:
    """The graph at `path` opened, and checked against torch."""
    runner = OnnxRunner(_session(path, threads), max_width=max_width)
    runner.path = path
    _check(model, runner)
    return runner


def _session(path: Path, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a damaged cache file: drop it, so the next start makes it again
        path.unlink(missing_ok=True)
        raise ModelLoadError(f"onnxruntime could not open {path.name}: {exc}") from None


def onnx_int8(model: TextModel, exact: OnnxRunner, threads: int) -> OnnxRunner:
    """`precision: "fast"` on a CPU without bf16: the exact export (unfused, whichever graph exact
    runs) with its weights quantized to int8 (onnxruntime's dynamic quantization: int8 weights per
    output channel, activations quantized per pass), cached beside it under the same name. Checked
    at start: on the check rows its scores must stay within INT8_TOLERANCE of torch's fp32 ones, else
    fast keeps the fp32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    started = time.perf_counter()
    assert exact.export is not None
    path = exact.export.with_name(exact.export.stem + f"-int8-{INT8_SCHEME}.onnx")
    made = not path.is_file()
    if made:
        with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
            partial_path = Path(scratch) / path.name
            quantize_dynamic(
                str(exact.export), str(partial_path), weight_type=QuantType.QInt8, per_channel=True
            )
            os.replace(partial_path, path)
    runner = OnnxRunner(_session(path, threads), max_width=exact.max_width, name="onnxruntime-int8")
    runner.path = path
    long, short = (e.ids for e in model.encode([CHECK_TEXT, "Short"]))
    difference = 0.0
    for ids, attention in _passes(model, [long, short]):
        quantized = model.outputs(runner(ids, attention), "probability")
        reference = model.outputs(model.torch_forward(ids, attention), "probability")
        difference = max(difference, float(np.max(np.abs(quantized - reference))))
    if not difference <= INT8_TOLERANCE:
        raise ModelLoadError(f"the int8 graph of {model.model_id} moves a score by {difference:.3f}")
    log.info(
        "fast passes run on onnxruntime int8 (%s in %.1fs; largest score difference %.4f on the check rows)",
        "quantized" if made else "cached",
        time.perf_counter() - started,
        difference,
    )
    return runner


_EXPORTING = threading.Lock()


def _export(model: TextModel, path: Path, kind: str) -> None:
    import torch

    ids = torch.full((2, 8), int(model.mask_token_id), dtype=torch.int64)  # any id: _check tests the graph
    attention = torch.ones_like(ids)
    inputs = {"input_ids": ids, "attention_mask": attention}
    if kind == MODULE and "use_cache" in inspect.signature(model.model.forward).parameters:
        inputs["use_cache"] = False  # a decoder's key-value cache: an output tracing cannot take
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
        module = model.model if kind == MODULE else GRAPHS[kind](model.model)
        # torch's exporter keeps its state in globals ("GLOBALS.in_onnx_export must be False" when
        # two threads export at once: two services in one process, a test beside a service's
        # background export): one export at a time per process.
        with _EXPORTING, torch.inference_mode():
            torch.onnx.export(
                module,
                (),
                tmp,
                kwargs=inputs,
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


def _graph_kind(classifier: Any) -> str:
    """The graph `classifier` is exported as: a kind of GRAPHS (its name goes into the cache file's),
    or MODULE where none computes this classifier as transformers does."""
    config = getattr(classifier, "config", None)
    if type(classifier).__name__ in DECODER_KINDS:
        return _decoder_kind(config, DECODER_KINDS[type(classifier).__name__])
    kind = CLS_KINDS.get(type(classifier).__name__, MODULE)
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return MODULE  # causal attention or cross-attention: not the encoder these graphs compute
    base = getattr(classifier, getattr(classifier, "base_model_prefix", ""), None)
    if kind in ("cls-bert", "cls-albert") and getattr(base, "pooler", None) is None:
        return MODULE  # the head these graphs end with reads the pooler's output
    if kind == "cls-deberta-v2" and (
        getattr(base, "z_steps", 0) > 1 or (base.encoder.conv is not None and len(base.encoder.layer) < 2)
    ):
        return MODULE  # the last layer again (z_steps), or the convolution after the CLS-only layer
    if kind == "cls-modernbert":
        return _modernbert_kind(config)
    return kind


def _modernbert_kind(config: Any) -> str:
    """Mean pooling reads every position of the last layer: that graph keeps it whole."""
    for parameters in (getattr(config, "rope_parameters", None) or {}).values():
        rope = str((parameters or {}).get("rope_type", "default"))
        if "dynamic" in rope or rope == "longrope":
            return MODULE  # frequencies that change with the length: a branch tracing would freeze
    return {"cls": "cls-modernbert", "mean": "full-modernbert"}.get(config.classifier_pooling, MODULE)


def _decoder_kind(config: Any, kind: str) -> str:
    """A decoder's graph computes causal attention over every position, with fixed rotary frequencies
    where there are any: other variants are transformers' module."""
    if getattr(config, "add_cross_attention", False) or getattr(config, "use_bidirectional_attention", False):
        return MODULE
    if any(layer != "full_attention" for layer in getattr(config, "layer_types", None) or ()):
        return MODULE  # sliding-window layers (Qwen2's use_sliding_window)
    parameters = getattr(config, "rope_parameters", None) or {}
    rope = str(parameters.get("rope_type", "default")) if isinstance(parameters, dict) else "default"
    if "dynamic" in rope or rope == "longrope":
        return MODULE  # frequencies that change with the length: a branch tracing would freeze
    return kind


# Parts of every graph.


def _logits_module(classifier: Any, logits: Callable[[Any, Any], Any]) -> Any:
    """`logits(input_ids, attention_mask)` as an eval-mode module that owns `classifier` (so that its
    weights become the graph's initializers)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return logits(input_ids, attention_mask)

    return Logits().eval()


def _padding_mask(attention_mask: Any, dtype: Any) -> Any:
    """Eager attention's additive mask: 0 on a row's tokens, the dtype's minimum on its padding (not
    -inf: a row that only sees padding stays finite, and 0 times it stays 0)."""
    import torch

    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def _heads(x: Any, heads: int) -> Any:
    """(rows, positions, heads * size) -> (rows, heads, positions, size)."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _attend(q: Any, k: Any, v: Any, mask: Any, scaling: float) -> Any:
    """Eager attention of split heads, merged again: (rows, queries, heads * size). The scores are
    divided by 1 / scaling, not multiplied by scaling as transformers does (minilm's logits are the
    same bit for bit): onnxruntime's transformer optimizer (fusion.py) takes the first Mul above the
    mask's Add for the scale, and with two (the scale's and the mask's) it recognises no attention."""
    import torch

    scores = torch.matmul(q, k.transpose(2, 3)) / (1 / scaling) + mask
    context = torch.matmul(scores.softmax(-1), v).transpose(1, 2)
    return context.reshape(context.shape[0], context.shape[1], -1)


Step = Callable[[Any, Any, Any], Any]


def _last_at_first(layers: Any, hidden: Any, step: Step) -> Any:
    """`hidden` through `layers`, the last one for position 0 only. `step(layer, queries, hidden)` is
    one layer for the positions of `queries`, with keys and values from every position of `hidden`."""
    *inner, last = layers
    for layer in inner:
        hidden = step(layer, hidden, hidden)
    return step(last, hidden[:, :1], hidden)


# BERT-shaped layers: BERT, RoBERTa, XLM-R, CamemBERT, ELECTRA. Their embeddings and heads differ.


def _bert_layer(layer: Any, queries: Any, hidden: Any, mask: Any) -> Any:
    """One BertLayer (attention.self.query/key/value, attention.output, intermediate, output)."""
    attention = layer.attention.self
    heads = attention.num_attention_heads
    q = _heads(attention.query(queries), heads)
    k, v = _heads(attention.key(hidden), heads), _heads(attention.value(hidden), heads)
    attended = layer.attention.output(_attend(q, k, v, mask, attention.scaling), queries)
    return layer.output(layer.intermediate(attended), attended)


def _bert_encoder(base: Any, hidden: Any, attention_mask: Any) -> Any:
    step = partial(_bert_layer, mask=_padding_mask(attention_mask, hidden.dtype))
    return _last_at_first(base.encoder.layer, hidden, step)


def _bert_graph(classifier: Any) -> Any:
    """BERT: the pooler (dense and tanh of [CLS]) under the classifier."""
    bert = classifier.bert

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        hidden = _bert_encoder(bert, bert.embeddings(input_ids=input_ids), attention_mask)
        return classifier.classifier(bert.pooler(hidden))

    return _logits_module(classifier, logits)


def _roberta_graph(classifier: Any) -> Any:
    """RoBERTa, XLM-R, CamemBERT: the embeddings count positions from the padding id (from the ids,
    as torch does); the head reads `<s>`."""
    roberta = classifier.roberta

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        hidden = roberta.embeddings(input_ids=input_ids)
        return classifier.classifier(_bert_encoder(roberta, hidden, attention_mask))

    return _logits_module(classifier, logits)


def _electra_graph(classifier: Any) -> Any:
    """ELECTRA: embeddings projected to the hidden size where narrower; the head reads [CLS]."""
    electra = classifier.electra
    project = getattr(electra, "embeddings_project", None)

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        hidden = electra.embeddings(input_ids=input_ids)
        hidden = hidden if project is None else project(hidden)
        return classifier.classifier(_bert_encoder(electra, hidden, attention_mask))

    return _logits_module(classifier, logits)


# DistilBERT and ALBERT: the same attention under other names.


def _distilbert_block(block: Any, queries: Any, hidden: Any, mask: Any) -> Any:
    """One TransformerBlock: q_lin/k_lin/v_lin/out_lin, sa_layer_norm, ffn, output_layer_norm."""
    attention = block.attention
    q = _heads(attention.q_lin(queries), attention.n_heads)
    k, v = (
        _heads(attention.k_lin(hidden), attention.n_heads),
        _heads(attention.v_lin(hidden), attention.n_heads),
    )
    attended = block.sa_layer_norm(attention.out_lin(_attend(q, k, v, mask, attention.scaling)) + queries)
    return block.output_layer_norm(block.ffn(attended) + attended)


def _distilbert_graph(classifier: Any) -> Any:
    """DistilBERT: pre_classifier and a ReLU of [CLS] under the classifier."""
    import torch

    distilbert = classifier.distilbert

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        hidden = distilbert.embeddings(input_ids)
        step = partial(_distilbert_block, mask=_padding_mask(attention_mask, hidden.dtype))
        first = _last_at_first(distilbert.transformer.layer, hidden, step)[:, 0]
        return classifier.classifier(torch.relu(classifier.pre_classifier(first)))

    return _logits_module(classifier, logits)


def _albert_layer(layer: Any, queries: Any, hidden: Any, mask: Any) -> Any:
    """One AlbertLayer: attention (query/key/value, dense, LayerNorm), ff_chunk, full_layer_layer_norm."""
    attention = layer.attention
    heads = attention.num_attention_heads
    q = _heads(attention.query(queries), heads)
    k, v = _heads(attention.key(hidden), heads), _heads(attention.value(hidden), heads)
    # The residual second, as in BERT's graph (the same sum): the transformer optimizer (fusion.py)
    # looks for attention above the first of the sum's inputs that an Add makes, and in the first
    # layer the residual is one (the embeddings' projection).
    attended = attention.LayerNorm(attention.dense(_attend(q, k, v, mask, attention.scaling)) + queries)
    return layer.full_layer_layer_norm(layer.ff_chunk(attended) + attended)


def _albert_graph(classifier: Any) -> Any:
    """ALBERT: the shared layers in the order AlbertTransformer runs them; the pooler (dense and tanh
    of [CLS]) under the classifier."""
    albert = classifier.albert
    encoder, count, groups = albert.encoder, albert.config.num_hidden_layers, albert.config.num_hidden_groups
    layers = [
        layer
        for i in range(count)
        for layer in encoder.albert_layer_groups[int(i / (count / groups))].albert_layers
    ]

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        hidden = encoder.embedding_hidden_mapping_in(albert.embeddings(input_ids=input_ids))
        step = partial(_albert_layer, mask=_padding_mask(attention_mask, hidden.dtype))
        first = _last_at_first(layers, hidden, step)[:, 0]
        return classifier.classifier(albert.pooler_activation(albert.pooler(first)))

    return _logits_module(classifier, logits)


# DeBERTa-v2 (and v3): disentangled attention with relative positions.


def _deberta_v2_graph(classifier: Any) -> Any:
    """DeBERTa-v2: DisentangledSelfAttention's terms (content, content-to-position, position-to-content)
    for the queries computed, the convolution after the first layer where there is one; the context
    pooler reads [CLS]. The padding mask is additive over keys: torch's also masks padded queries,
    whose rows nothing reads."""
    import torch

    deberta = classifier.deberta
    encoder, layers = deberta.encoder, deberta.encoder.layer
    tables = _deberta_tables(classifier) if encoder.relative_attention else None

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        embedded = deberta.embeddings(input_ids=input_ids, mask=attention_mask)
        mask = _padding_mask(attention_mask, embedded.dtype)
        positions = torch.arange(embedded.shape[1], device=embedded.device)
        everywhere = _deberta_relative(tables, positions, positions)
        at_first = _deberta_relative(tables, positions[:1], positions)
        rel_embeddings = encoder.get_rel_embedding()
        hidden = embedded
        for i, layer in enumerate(layers):
            queries, relative = (hidden[:, :1], at_first) if i == len(layers) - 1 else (hidden, everywhere)
            hidden = _deberta_layer(layer, queries, hidden, mask, relative, rel_embeddings)
            if i == 0 and encoder.conv is not None:
                hidden = encoder.conv(embedded, hidden, attention_mask)
        return classifier.classifier(classifier.pooler(hidden))

    return _logits_module(classifier, logits)


def _deberta_tables(classifier: Any) -> tuple[Any, Any]:
    """The content-to-position and position-to-content indexes by distance (query - key, offset by the
    largest distance), from transformers' own bucketing: computed in the graph, its logarithms could
    land in other buckets than torch's at their edges (onnxruntime's Log is not torch's)."""
    import torch
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    encoder = classifier.deberta.encoder
    reach = EAGER_MAX_WIDTH  # distances in any pass the graph takes
    span = encoder.layer[0].attention.self.pos_ebd_size
    distance = torch.arange(1 - reach, reach)
    buckets, furthest = encoder.position_buckets, encoder.max_relative_positions
    if buckets > 0 and furthest > 0:  # as build_relative_position decides
        distance = make_log_bucket_position(distance, buckets, furthest)
    distance = distance.to(torch.long)
    return (distance + span).clamp(0, span * 2 - 1), (span - distance).clamp(0, span * 2 - 1)


def _deberta_relative(tables: tuple[Any, Any] | None, queries: Any, keys: Any) -> tuple[Any, Any] | None:
    """Indexes into the relative embeddings: content-to-position (queries x keys), and
    position-to-content (keys x queries), as torch gathers them before its transpose."""
    if tables is None:
        return None
    c2p, p2c = tables
    offset = (len(c2p) - 1) // 2
    return c2p[queries[:, None] - keys[None, :] + offset], p2c[keys[:, None] - queries[None, :] + offset]


def _deberta_layer(
    layer: Any, queries: Any, hidden: Any, mask: Any, relative: Any, rel_embeddings: Any
) -> Any:
    """One DebertaV2Layer for the positions of `queries`."""
    context = _disentangled(layer.attention.self, queries, hidden, mask, relative, rel_embeddings)
    attended = layer.attention.output(context, queries)
    return layer.output(layer.intermediate(attended), attended)


def _disentangled(
    attention: Any, queries: Any, hidden: Any, mask: Any, relative: Any, rel_embeddings: Any
) -> Any:
    """DisentangledSelfAttention, in its order of operations (keys divided by the scale before the
    product, each relative term divided on its own)."""
    import torch

    heads = attention.num_attention_heads
    q = _heads(attention.query_proj(queries), heads)
    k, v = _heads(attention.key_proj(hidden), heads), _heads(attention.value_proj(hidden), heads)
    factor = 1 + ("c2p" in attention.pos_att_type) + ("p2c" in attention.pos_att_type)
    scale = float(np.sqrt(np.float32(q.shape[-1]) * factor))  # float32, as scaled_size_sqrt
    scores = torch.matmul(q, k.transpose(-1, -2) / scale)
    if attention.relative_attention:
        scores = scores + _relative_scores(attention, q, k, relative, rel_embeddings, scale)
    context = torch.matmul((scores + mask).softmax(-1), v).transpose(1, 2)
    return context.reshape(context.shape[0], context.shape[1], -1)


def _relative_scores(attention: Any, q: Any, k: Any, relative: Any, rel_embeddings: Any, scale: float) -> Any:
    """disentangled_attention_bias for the queries in `q`, every key in `k`."""
    types, heads, span = attention.pos_att_type, attention.num_attention_heads, attention.pos_ebd_size
    c2p_index, p2c_index = relative
    embeddings = rel_embeddings[: span * 2].unsqueeze(0)
    shared = attention.share_att_key
    score = 0
    if "c2p" in types:
        pos_key = _heads((attention.key_proj if shared else attention.pos_key_proj)(embeddings), heads)
        c2p = q.matmul(pos_key.transpose(-1, -2))  # rows x heads x queries x relative distances
        index = c2p_index.expand(c2p.shape[0], c2p.shape[1], -1, -1)
        score = score + c2p.gather(-1, index) / scale
    if "p2c" in types:
        pos_query = _heads((attention.query_proj if shared else attention.pos_query_proj)(embeddings), heads)
        p2c = k.matmul(pos_query.transpose(-1, -2))  # rows x heads x keys x relative distances
        index = p2c_index.expand(p2c.shape[0], p2c.shape[1], -1, -1)
        score = score + p2c.gather(-1, index).transpose(-1, -2) / scale
    return score


# ModernBERT: pre-norm layers, rotary positions, global and sliding-window attention.


def _modernbert_graph(classifier: Any, mean: bool) -> Any:
    """ModernBERT: rotary positions per attention type, sliding-window layers seeing keys at most
    `config.sliding_window` positions away; the head on [CLS] (its last layer at position 0 only) or
    on the mean of the row's tokens (its last layer whole)."""
    import torch

    model, config = classifier.model, classifier.config

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        hidden = model.embeddings(input_ids=input_ids)
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        masks = {
            "full_attention": _padding_mask(attention_mask, hidden.dtype),
            "sliding_attention": _sliding_mask(
                attention_mask, positions, config.sliding_window, hidden.dtype
            ),
        }
        rope = {kind: model.rotary_emb(hidden, positions[None], kind) for kind in set(config.layer_types)}
        for i, layer in enumerate(model.layers):
            first_only = not mean and i == len(model.layers) - 1
            kind = layer.attention_type
            hidden = _modernbert_layer(layer, hidden, masks[kind], rope[kind], first_only)
        hidden = model.final_norm(hidden)
        if mean:
            weights = attention_mask.to(hidden.dtype)
            pooled = (hidden * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)
        else:
            pooled = hidden[:, 0]
        return classifier.classifier(classifier.head(pooled))

    return _logits_module(classifier, logits)


def _sliding_mask(attention_mask: Any, positions: Any, window: int, dtype: Any) -> Any:
    """The padding mask and the window in one additive mask (added separately, a key outside both would
    get twice the minimum: -inf, and a row of them NaN)."""
    import torch

    near = (positions[:, None] - positions[None, :]).abs() <= window
    seen = (attention_mask[:, None, None, :] > 0) & near[None, None]
    return (~seen).to(dtype) * torch.finfo(dtype).min


def _modernbert_layer(layer: Any, hidden: Any, mask: Any, rope: tuple[Any, Any], first_only: bool) -> Any:
    """One ModernBertEncoderLayer: attn_norm, Wqkv, rotary, attention, Wo; mlp_norm, mlp; residuals."""
    attention = layer.attn
    cos, sin = (x.unsqueeze(1) for x in rope)
    qkv = attention.Wqkv(layer.attn_norm(hidden))
    q, k, v = qkv.view(hidden.shape[0], hidden.shape[1], 3, -1, attention.head_dim).unbind(dim=2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    k = _rotate(k, cos, sin)
    if first_only:
        q, cos, sin, hidden, mask = q[:, :, :1], cos[:, :, :1], sin[:, :, :1], hidden[:, :1], mask[:, :, :1]
    q = _rotate(q, cos, sin)
    hidden = hidden + attention.Wo(_attend(q, k, v, mask, attention.head_dim**-0.5))
    return hidden + layer.mlp(layer.mlp_norm(hidden))


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    """apply_rotary_pos_emb for one tensor (float32 already)."""
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


# Decoders: causal attention; the head reads each row's last token that is not the pad id.


def _head_positions(input_ids: Any, pad_token_id: int) -> Any:
    """The position each row's head reads, found as transformers' decoder heads find it: the rightmost
    token that is not the pad id (every row's last where it is NO_TOKEN, which no row holds)."""
    import torch

    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    return (positions * (input_ids != pad_token_id).to(torch.int32)).argmax(-1)


def _causal_mask(attention_mask: Any, queries: Any, dtype: Any) -> Any:
    """Eager attention's additive mask for queries at the positions `queries` (rows or 1 x queries): a
    key is seen where it is one of the row's tokens and not after the query."""
    import torch

    keys = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    seen = (attention_mask[:, None, None, :] > 0) & (keys[None, None, None, :] <= queries[:, None, :, None])
    return (~seen).to(dtype) * torch.finfo(dtype).min


def _decoder_graph(classifier: Any, embed: Callable, layers: Any, layer: Callable, norm: Any) -> Any:
    """`embed(input_ids, positions)` -> (hidden, what every layer reads besides), then `layers`, the
    last at each row's head position only (its keys and values still from every position, those after
    it masked as causal attention masks them), then `norm` and the score head there.
    `layer(layer, queries, hidden, mask, context, at)`: one layer for the queries at positions `at`."""
    import torch

    pad = text_config(classifier.config).pad_token_id
    pad = NO_TOKEN if pad is None else int(pad)

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden, context = embed(input_ids, positions)
        everywhere = _causal_mask(attention_mask, positions[None], hidden.dtype)
        *inner, last = layers
        for each in inner:
            hidden = layer(each, hidden, hidden, everywhere, context, positions[None])
        head = _head_positions(input_ids, pad).long()
        queries = hidden[torch.arange(hidden.shape[0], device=hidden.device), head][:, None]
        at_head = _causal_mask(attention_mask, head[:, None], hidden.dtype)
        hidden = layer(last, queries, hidden, at_head, context, head[:, None])
        return classifier.score(norm(hidden[:, 0]))

    return _logits_module(classifier, logits)


def _gpt2_graph(classifier: Any) -> Any:
    """GPT-2: learnt positions, pre-norm blocks (LayerNorm), queries, keys and values from one Conv1D."""
    body = classifier.transformer

    def embed(input_ids: Any, positions: Any) -> tuple[Any, Any]:
        return body.wte(input_ids) + body.wpe(positions)[None], None

    return _decoder_graph(classifier, embed, body.h, _gpt2_block, body.ln_f)


def _gpt2_block(block: Any, queries: Any, hidden: Any, mask: Any, context: Any, at: Any) -> Any:
    """One GPT2Block for the positions of `queries`: ln_1, c_attn, attention, c_proj; ln_2, mlp."""
    attention = block.attn
    width, heads, projection = attention.embed_dim, attention.num_heads, attention.c_attn
    normed = block.ln_1(hidden)
    if queries is hidden:
        q, k, v = projection(normed).split(width, dim=2)
    else:  # the queries' columns of c_attn for their positions, the keys' and values' for every one
        q = _columns(projection, block.ln_1(queries), 0, width)
        k, v = _columns(projection, normed, width, 3 * width).split(width, dim=2)
    attended = _attend(_heads(q, heads), _heads(k, heads), _heads(v, heads), mask, attention.scaling)
    hidden = queries + attention.c_proj(attended)
    return hidden + block.mlp(block.ln_2(hidden))


def _columns(projection: Any, x: Any, start: int, end: int) -> Any:
    """Output columns start:end of a Conv1D (x @ weight + bias)."""
    import torch

    return torch.matmul(x, projection.weight[:, start:end]) + projection.bias[start:end]


def _llama_graph(classifier: Any) -> Any:
    """Llama, Qwen2, Gemma: embeddings (Gemma's scaled by their module), pre-norm layers (RMSNorm),
    rotary positions, grouped-query attention."""
    body = classifier.model

    def embed(input_ids: Any, positions: Any) -> tuple[Any, Any]:
        hidden = body.embed_tokens(input_ids)
        cos, sin = body.rotary_emb(hidden, positions[None])  # 1 x positions x head size
        return hidden, (cos[0], sin[0])

    layers = body.layers[: classifier.config.num_hidden_layers]
    return _decoder_graph(classifier, embed, layers, _llama_layer, body.norm)


def _llama_layer(layer: Any, queries: Any, hidden: Any, mask: Any, rope: Any, at: Any) -> Any:
    """One LlamaDecoderLayer (Qwen2's, Gemma's) for the queries at positions `at`: input_layernorm,
    q/k/v_proj, rotary, attention, o_proj; post_attention_layernorm, mlp; residuals."""
    attention = layer.self_attn
    size, groups = attention.head_dim, attention.num_key_value_groups
    cos, sin = rope
    normed = layer.input_layernorm(hidden)
    asked = normed if queries is hidden else layer.input_layernorm(queries)
    q = _heads(attention.q_proj(asked), attention.q_proj.out_features // size)
    k = _heads(attention.k_proj(normed), attention.k_proj.out_features // size)
    v = _heads(attention.v_proj(normed), attention.v_proj.out_features // size)
    q = _rotate(q, cos[at][:, None], sin[at][:, None])
    k = _rotate(k, cos[None, None], sin[None, None])
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # as repeat_kv
    hidden = queries + attention.o_proj(_attend(q, k, v, mask, attention.scaling))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


# Each kind's builder: the classifier -> a module (input_ids, attention_mask) -> logits.
GRAPHS: dict[str, Callable[[Any], Any]] = {
    "cls-bert": _bert_graph,
    "cls-roberta": _roberta_graph,
    "cls-electra": _electra_graph,
    "cls-distilbert": _distilbert_graph,
    "cls-albert": _albert_graph,
    "cls-deberta-v2": _deberta_v2_graph,
    "cls-modernbert": partial(_modernbert_graph, mean=False),
    "full-modernbert": partial(_modernbert_graph, mean=True),
    "last-gpt2": _gpt2_graph,
    "last-llama": _llama_graph,
}


def _check(model: TextModel, runner: OnnxRunner) -> None:
    """The exported graph must give torch's logits at shapes other than the traced one, padded or not
    (tracing records Python-level branches as constants; these rows would show a wrong one): refused
    otherwise. Then on rows as wide as the widest pass it would take (a position table, or the
    precision, can fail there only). Where they fail, the widest of CHECK_WIDTHS below that passes
    becomes its widest pass, and wider ones stay on torch. (Widest first: a start where the graph
    passes pays for one long width, not five.)"""
    long, short = (e.ids for e in model.encode([CHECK_TEXT, "Short"]))
    for rows in ([long, short], [long] * 3):
        difference = _difference(model, runner, rows)
        if not difference <= TOLERANCE:
            raise ModelLoadError(f"ONNX export of {model.model_id} differs from torch by {difference:.1e}")
    *narrower, widest = _check_widths(model.max_length, runner.max_width)
    reason = _failure(model, runner, long, widest)
    if reason is None:
        return
    passing = (width for width in reversed(narrower) if _failure(model, runner, long, width) is None)
    runner.max_width = next(passing, len(long))
    log.warning(
        "ONNX export of %s %s at %d tokens: passes wider than %d tokens stay on torch",
        model.model_id,
        reason,
        widest,
        runner.max_width,
    )


def _failure(model: TextModel, runner: OnnxRunner, ids: np.ndarray, width: int) -> str | None:
    """How the graph is off on rows of `width` tokens (None: it is not)."""
    try:
        difference = _difference(model, runner, _long_rows(model, ids, width))
    except Exception as exc:  # onnxruntime's error, e.g. a position past a table's end
        return f"fails ({str(exc).strip().splitlines()[0][:200]})"
    return None if difference <= TOLERANCE else f"differs from torch by {difference:.1e}"


def _difference(model: TextModel, runner: OnnxRunner, rows: list[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(runner(ids, attention) - model.torch_forward(ids, attention))))
        for ids, attention in _passes(model, rows)
    )


def _passes(model: TextModel, rows: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """`rows` as the engine would run them: (ids, attention) of one padded pass, or where the model is
    never padded, of one pass per length."""
    return [model.padded([rows[i] for i in group]) for group in model.pass_groups(rows)]


def _check_widths(max_length: int, max_width: int) -> list[int]:
    """CHECK_WIDTHS below the widest pass the runner takes, and that width."""
    top = min(max_length, max_width)
    return [width for width in CHECK_WIDTHS if width < top] + [top]


def _long_rows(model: TextModel, ids: np.ndarray, width: int) -> list[np.ndarray]:
    """A row of `width` tokens and a padded one half as long: `ids`' text repeated between its boundary
    tokens (the ids are ordinary; the positions are what is new)."""
    head, tail = ids[: model.keep_prefix], ids[len(ids) - model.keep_suffix :]
    text = ids[len(head) : len(ids) - len(tail)]
    return [
        np.concatenate([head, np.resize(text, max(n - len(head) - len(tail), 0)), tail])
        for n in (width, width // 2 + 1)
    ]
