"""The exact graph through onnxruntime's transformer optimizer: attention, each residual Add with the
LayerNorm after it (SkipLayerNormalization), the embeddings' sum and LayerNorm, and bias-GELU fused
into onnxruntime's own operators. Kept only where it gives the same logits and is faster.

The fused graph is made once, on the first start after an export, beside the export (its name plus
`-fused-SCHEME`), and decided on then: its logits must be within TOLERANCE of the largest logit of the
unfused graph's, it must pass the exact graph's own check against torch at the same widths, and it is
timed against the unfused graph on rows of ~24 and ~256 tokens. With ONNX_FUSION=auto it runs the
exact passes only if it is faster at both widths and by MARGIN on their geometric mean: a noisy
measurement then keeps the graph Clarion always ran. The decision and its numbers are written beside
the graph (`.json`, named by the CPU's capability and the threads, which the timing depends on) and
read by later starts, so every start from that cache on such a CPU runs the same graph (the same
exact numbers) and none but the first pays for the optimizer and the timing; delete the file to
decide again. ONNX_FUSION=on runs the fused graph whenever it checks out; off never makes it.

Which fusions apply depends on the graph kind (`tests/test_onnx_backend.py` asserts the counts): the
BERT-shaped graphs (BERT, RoBERTa, ELECTRA, DistilBERT, ALBERT) fuse attention in every layer but
the last, whose queries are position 0 only (the fused operator takes queries, keys and values from
one input); DeBERTa's disentangled attention and ModernBERT's rotary attention are not the
optimizer's pattern, so their graphs fuse the LayerNorms and GELUs only. transformers' own module
exports (MODULE), decoders among them, are not tried: the optimizer's BERT patterns assume an
encoder's attention.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.runtime.model import TextModel

log = logging.getLogger(__name__)

# The optimizer's BERT fusions; the attention mask goes to the fused operator as it is (0/1 per
# token), not as each row's length, which would assume that padding only ends a row.
MODEL_TYPE = "bert"
SCHEME = "bert-mask"  # part of the fused graph's file name: a change of options makes a new graph
# Largest difference between the fused and unfused graphs' logits accepted, as a fraction of the
# largest |logit| (measured: 1.2e-6 on minilm, under 1e-6 on the tiny test models of every kind).
TOLERANCE = 1e-5
# ONNX_FUSION=auto: how much faster (the geometric mean of the two widths' speed-ups) the fused graph
# must be, and faster at each width.
MARGIN = 1.05
# (rows, tokens) of the passes timed at the first start, interleaved rounds of each.
TIMED = ((8, 24), (2, 256))
ROUNDS = 4
TEXT = "The film was not very good, but I loved the acting and the music."


def fused_if_faster(
    model: TextModel, exact: Any, reopen: Callable[[Path], Any], mode: str, threads: int
) -> Any:
    """`exact` (an OnnxRunner of the export, checked), or the runner of its fused graph where `mode`
    and the stored decision say so. `reopen(path)` opens a graph file as a checked runner."""
    import torch

    if mode == "off":
        return exact
    path = exact.path.with_name(exact.path.stem + f"-fused-{SCHEME}.onnx")
    # The graph is the same on any CPU; which one is faster is not.
    machine = f"cpu-{torch.backends.cpu.get_cpu_capability()}-t{threads}"
    decision_path = path.with_name(f"{path.stem}-{machine}.json")
    usable = {"auto": ("faster",), "on": ("faster", "slower")}[mode]
    decision, fused = _read(decision_path), None
    if decision is None or (decision["verdict"] in usable and not path.is_file()):
        decision, fused = _decide(model, exact, reopen, path)
        _write(decision_path, decision)
    elif decision["verdict"] not in usable:
        log.info("exact passes keep the unfused graph: %s (%s)", decision["verdict"], decision_path.name)
    if decision["verdict"] not in usable:
        return exact
    try:
        fused = reopen(path) if fused is None else fused
    except Exception as exc:  # a damaged file (the session drops it): the next start makes it again
        log.warning("exact passes keep the unfused graph: the fused one fails: %s", _reason(exc))
        return exact
    fused.fused, fused.export = decision["operators"], exact.path
    return fused


def _decide(
    model: TextModel, exact: Any, reopen: Callable[[Path], Any], path: Path
) -> tuple[dict[str, Any], Any]:
    """Make the fused graph, check it and time it against `exact`: the decision and what it rests on (its
    "verdict": "faster", "slower" (the same logits, not faster enough) or why it is refused), and
    the fused graph's runner, opened and checked, unless refused."""
    started = time.perf_counter()
    decision: dict[str, Any] = {"operators": {}}
    fused = None
    try:
        decision["operators"] = _fuse(model, exact.path, path)
        decision["optimizer_s"] = round(time.perf_counter() - started, 2)
        if decision["operators"]:
            fused = reopen(path)  # the exact graph's own check against torch (it may narrow passes)
            decision.update(_compare(model, exact, fused))
        else:
            decision["verdict"] = "refused: the optimizer fused nothing in this graph"
    except Exception as exc:  # the optimizer's or the check's error: the unfused graph keeps running
        decision["verdict"] = f"refused: {_reason(exc)}"
    if decision["verdict"].startswith("refused"):
        path.unlink(missing_ok=True)
        fused = None
    log.info(
        "fused exact graph of %s: %s; %s; made and measured in %.1fs (optimizer %.1fs): %s",
        model.model_id,
        ", ".join(f"{op} {n}" for op, n in decision["operators"].items()) or "no fused operator",
        _summary(decision),
        time.perf_counter() - started,
        decision.get("optimizer_s", 0.0),
        decision["verdict"],
    )
    return decision, fused


def _fuse(model: TextModel, source: Path, target: Path) -> dict[str, int]:
    """Run the optimizer on `source` into `target` (atomically); the fused operators it counts."""
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions(MODEL_TYPE)
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    config = model.model.config
    optimized = optimize_model(
        str(source),
        model_type=MODEL_TYPE,
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        optimization_options=options,
        opt_level=0,  # its fusions only: the session applies onnxruntime's own at every start
    )
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        optimized.save_model_to_file(str(partial))
        os.replace(partial, target)
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def _compare(model: TextModel, exact: Any, fused: Any) -> dict[str, Any]:
    """The fused graph's logits against the unfused one's, and both graphs' ms per row: the verdict."""
    if fused.max_width < exact.max_width:
        return {"verdict": f"refused: right to {fused.max_width} tokens only (unfused: {exact.max_width})"}
    widest = min(model.max_length, exact.max_width)
    passes = timed_passes(model, widest)
    difference, scale = 0.0, 0.0
    for ids, attention in [*passes.values(), model.padded([_row(model, widest), _row(model, 7)])]:
        unfused = exact(ids, attention)
        difference = max(difference, float(np.max(np.abs(fused(ids, attention) - unfused))))
        scale = max(scale, float(np.max(np.abs(unfused))))
    relative = difference / max(scale, float(np.finfo(np.float32).tiny))
    if not relative <= TOLERANCE:
        return {"difference": relative, "verdict": f"refused: logits off by {relative:.1e} of their scale"}
    ms = per_row_ms({"unfused": exact, "fused": fused}, passes, ROUNDS)
    speedups = [ms["unfused"][shape] / ms["fused"][shape] for shape in passes]
    faster = min(speedups) > 1 and math.prod(speedups) ** (1 / len(speedups)) >= MARGIN
    return {"difference": relative, "ms": ms, "verdict": "faster" if faster else "slower"}


def timed_passes(
    model: TextModel, widest: int, shapes: tuple[tuple[int, int], ...] = TIMED
) -> dict[str, Any]:
    """(ids, attention) of a pass of each (rows, tokens) of `shapes`, its tokens at most `widest`."""
    passes = {}
    for count, tokens in shapes:
        row = _row(model, min(tokens, widest))
        passes[f"{count} x {len(row)}"] = model.padded([row] * count)
    return passes


def _row(model: TextModel, width: int) -> np.ndarray:
    """A row of `width` tokens (fewer where the model's maximum length is less): TEXT repeated
    between the boundary tokens."""
    (encoded,) = model.encode([" ".join([TEXT] * (width // 8 + 1))])  # truncated to max_length
    ids = encoded.ids
    head, tail = ids[: model.keep_prefix], ids[len(ids) - model.keep_suffix :]
    body = ids[len(head) : len(ids) - len(tail)]
    return np.concatenate([head, body[: max(width - len(head) - len(tail), 0)], tail])


def per_row_ms(
    runners: dict[str, Callable[[Any, Any], Any]], passes: dict[str, Any], rounds: int, repeats: int = 1
) -> dict[str, dict[str, float]]:
    """Median ms per row of each runner on each pass, over `rounds` rounds that alternate which
    runner goes first. Each timed pass (`repeats` of them) follows an untimed one: another session's
    threads spin for a while after its pass, and would slow the first one after it."""
    times: dict[str, dict[str, list[float]]] = {name: {shape: [] for shape in passes} for name in runners}
    order = list(runners.items())
    for round_ in range(rounds):
        for name, runner in order if round_ % 2 == 0 else order[::-1]:
            for shape, (ids, attention) in passes.items():
                runner(ids, attention)
                started = time.perf_counter()
                for _ in range(repeats):
                    runner(ids, attention)
                times[name][shape].append((time.perf_counter() - started) * 1000 / repeats / len(ids))
    return {
        name: {shape: float(np.median(ms)) for shape, ms in shapes.items()} for name, shapes in times.items()
    }


def _summary(decision: dict[str, Any]) -> str:
    parts = []
    if "difference" in decision:
        parts.append(f"logits within {decision['difference']:.1e} of their scale")
    for shape, unfused in decision.get("ms", {}).get("unfused", {}).items():
        parts.append(f"{shape} tokens {unfused:.2f} -> {decision['ms']['fused'][shape]:.2f} ms/row")
    return "; ".join(parts) or "not compared"


def _reason(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _read(path: Path) -> dict[str, Any] | None:
    try:
        decision = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return decision if isinstance(decision, dict) and isinstance(decision.get("verdict"), str) else None


def _write(path: Path, decision: dict[str, Any]) -> None:
    """Atomically (several processes may decide at once: the last one's decision stays)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as file:
            json.dump(decision, file, indent=1)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache: this start decided, the next decides again
        log.warning("could not store the fused graph's decision in %s: %s", path, exc)
