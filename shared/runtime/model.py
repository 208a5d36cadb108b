"""The loaded classifier: torch model, labels, and the one way Clarion runs a forward pass."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from shared.errors import InvalidRequest
from shared.io.inputs import Input
from shared.kinds import Activation, LongText, Output, Precision
from shared.runtime.encoding import TYPE_STRIDE, EncodedText, TextEncoder
from shared.runtime.heads import scores

log = logging.getLogger(__name__)


@dataclass
class TextModel:
    """A sequence classifier ready to run. Build it with `load_text_model` (shared/runtime/loading.py)."""

    model_id: str
    source: str
    fingerprint: str  # changes whenever the weights, config or tokenizer could differ
    model: Any
    encoder: TextEncoder  # the tokenizer and its facts: maximum length, mask, padding, boundaries, windows
    device: Any
    labels: list[str]
    activation: Activation
    # Set when exact passes run elsewhere than torch (shared/runtime/onnx.py): (ids, attention) -> logits.
    exact_runner: Any = field(default=None, repr=False)
    # What runs "fast" passes, chosen by measurement (shared/serving/fast.py): torch in half
    # precision, the int8 graph, ...; None: exact's own path.
    fast_runner: Any = field(default=None, repr=False)
    # Held by every pass of the engine, and by `token_states` (the amortized explainer's features,
    # computed in the request's thread): torch never runs two passes of this model at once.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # Its passes run here, on token ids: what token-id masking, "fast", "amortized", faithfulness and
    # windows need. False for a model Clarion does not host (shared/runtime/remote.py).
    runs_locally = True

    # The encoder owns the tokenizer and the facts about it; the model is what most callers hold, so it
    # lends them read-only here and call sites need not reach through `encoder`.
    @property
    def tokenizer(self) -> Any:
        return self.encoder.tokenizer

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def mask_token_id(self) -> int:
        return self.encoder.mask_token_id

    @property
    def pad_token_id(self) -> int | None:
        return self.encoder.pad_token_id

    @property
    def takes_pairs(self) -> bool:
        """The tokenizer has a template for text pairs (and so for zero-shot texts)."""
        return self.encoder.takes_pairs

    @property
    def pads(self) -> bool:
        """Rows of several lengths may share a pass, the short ones padded. False for a decoder head
        without a pad id (shared/runtime/padding.py): each of its passes holds rows of one length."""
        return self.encoder.pad_token_id is not None

    def pass_groups(self, rows: Sequence[np.ndarray]) -> list[list[int]]:
        """The indexes of `rows` that may share a pass: all of them, or where rows are never padded,
        those of each length."""
        if self.pads:
            return [list(range(len(rows)))]
        lengths: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            lengths.setdefault(len(row), []).append(i)
        return list(lengths.values())

    @property
    def keep_prefix(self) -> int:
        return self.encoder.keep_prefix

    @property
    def keep_suffix(self) -> int:
        return self.encoder.keep_suffix

    @property
    def window_tokens(self) -> int:
        return self.encoder.window_tokens

    @property
    def window_width(self) -> int:
        """Tokens per window, boundary tokens included: WINDOW_TOKENS, at most the maximum length."""
        return self.encoder.window_width

    def encode(self, texts: Sequence[Input], long_text: LongText = "truncate") -> list[EncodedText]:
        """Tokenize (TextEncoder.encode): truncated to the maximum length, or whole and in windows."""
        return self.encoder.encode(texts, long_text)

    @property
    def cache_identity(self) -> str:
        """What cached results depend on besides the request: the model, and the window width."""
        return f"{self.fingerprint}:w{self.window_width}"

    def document_outputs(self, encoded: EncodedText, logits: np.ndarray, kind: Output) -> np.ndarray:
        """A text's outputs from the logits of its rows: a windowed document's is the mean of its
        windows' outputs (probabilities: the mean probability, as if each window voted with its
        confidence; no window's length or position weighs more, since all are full); a zero-shot
        text's, its candidate labels' scores from its rows (one per label)."""
        if encoded.zero_shot is not None:
            return zero_shot_outputs(logits, self.entailment_ids(), encoded.zero_shot.multi_label, kind)
        return self.outputs(logits, kind).mean(axis=0)

    def labels_of(self, encoded: EncodedText) -> list[str]:
        """The labels a text is scored on: the model's, or a zero-shot text's candidate labels."""
        return list(encoded.zero_shot.candidate_labels) if encoded.zero_shot is not None else self.labels

    def multi_label_of(self, encoded: EncodedText) -> bool:
        return encoded.zero_shot.multi_label if encoded.zero_shot is not None else self.multi_label

    def entailment_ids(self) -> tuple[int, int]:
        """(entailment, contradiction) logit indexes, found as transformers' zero-shot pipeline finds
        them: the first label whose name starts with "entail", and 0 (or the last, if entailment is
        0); InvalidRequest for a model without one (it is not an NLI model)."""
        entailment = next(
            (i for i, label in enumerate(self.labels) if label.lower().startswith("entail")), None
        )
        if entailment is None:
            raise InvalidRequest(
                "zero-shot labels need an NLI model with an entailment label (a name starting with "
                f"'entail'); {self.model_id} has {self.labels}"
            )
        return entailment, (len(self.labels) - 1 if entailment == 0 else 0)

    def forward(self, rows: Sequence[np.ndarray], precision: Precision = "exact") -> np.ndarray:
        """Raw logits (rows x labels, float32) of ONE forward pass over token-id rows, padded to the
        longest (rows of one length where the model is never padded: `pads`). Only the engine
        (shared/runtime/engine.py) calls this while serving: it decides what shares a pass, and it is
        the only thread that touches the model."""
        wanted, width = len(rows), max(len(r) for r in rows)
        if precision == "fast" and self.device.type == "cuda":
            count, bucket_width = _shape_bucket(wanted, width, self.max_length)
            rows = [*rows, *[rows[0]] * (count - wanted)]  # bucket fillers: copies, dropped below
            width = bucket_width if self.pads else width
        ids, attention = self.padded(rows, width)
        ids, types = split_types(ids)
        runner = self._runner(precision)
        if types is None and runner is not None and width <= runner.max_width:
            logits = runner(ids, attention)
        else:  # the graphs and the half-precision copy read no token types: pairs run here
            logits = self.torch_forward(ids, attention, types=types)
        return logits[:wanted]

    def _runner(self, precision: Precision) -> Any:
        """What runs these passes besides torch's fp32 model, if anything (read once per pass: a
        background thread may attach one between passes): "fast" runs the runner chosen for it, else
        exact's."""
        if precision == "fast" and self.fast_runner is not None:
            return self.fast_runner
        return self.exact_runner

    def token_states(self, rows: Sequence[np.ndarray], encoder: Any = None) -> list[np.ndarray]:
        """Each row's last-layer hidden states (tokens x hidden, float32), from the fp32 torch model,
        or from `encoder` (a base model of the same family: the amortized explainer's trained copy)."""
        import torch

        network = encoder if encoder is not None else self.model
        states: list[np.ndarray] = [np.empty(0)] * len(rows)
        for group in self.pass_groups(rows):
            ids, attention = self.padded([rows[i] for i in group])
            with self.lock, torch.inference_mode():
                out = network(
                    input_ids=torch.from_numpy(ids).to(self.device),
                    attention_mask=torch.from_numpy(attention).to(self.device),
                    output_hidden_states=True,
                )
            hidden = out.hidden_states[-1].float().cpu().numpy()
            for j, i in enumerate(group):
                states[i] = hidden[j, : len(rows[i])]
        return states

    def padded(self, rows: Sequence[np.ndarray], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids padded to `width` (default: the longest row) and their attention mask."""
        width = width or max(len(r) for r in rows)
        if not self.pads and any(len(r) != width for r in rows):
            raise ValueError(f"rows of {self.model_id} are never padded: a pass holds rows of one length")
        fill = self.pad_token_id if self.pad_token_id is not None else 0  # (unpadded: never written)
        ids = np.full((len(rows), width), fill, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for j, row in enumerate(rows):
            ids[j, : len(row)] = row
            attention[j, : len(row)] = 1
        return ids, attention

    def torch_forward(
        self, ids: np.ndarray, attention: np.ndarray, types: np.ndarray | None = None
    ) -> np.ndarray:
        """One pass through the fp32 torch model (a half-precision pass is a fast runner's:
        HalfPrecisionRunner); `types`: token types (a text pair's rows)."""
        return torch_logits(self.model, self.device, ids, attention, types)

    @property
    def exact_backend(self) -> str:
        return "torch" if self.exact_runner is None else self.exact_runner.name

    @property
    def fast_backend(self) -> str:
        """What runs "fast" passes: the chosen runner (torch in half precision, the int8 graph), or
        exact's own."""
        return self.fast_runner.name if self.fast_runner is not None else self.exact_backend

    @property
    def multi_label(self) -> bool:
        """Each label is scored on its own (sigmoid): several, or none, may be predicted."""
        return self.activation == "sigmoid"

    def outputs(self, logits: np.ndarray, kind: Output) -> np.ndarray:
        """Model outputs in the requested space: scores as the head's activation gives them
        (softmax, sigmoid, or the raw value of a regression head), or the raw logits."""
        if kind == "logit":
            return logits.astype(np.float64)
        return scores(logits, self.activation)


def _shape_bucket(rows: int, width: int, max_width: int) -> tuple[int, int]:
    """The padded shape of a half-precision GPU pass.

    cuBLAS chooses a bf16 kernel the first time it meets a shape: measured on an H200, 43 ms for a
    new shape against 3 ms for the same pass again (fp32 shows no such cost). Explanation passes come
    in every row count and length, so fast explanations ran 4x slower than exact ones. Rounding rows
    up to a power of two (then to multiples of 256) and length up to a multiple of 16 leaves a few
    hundred shapes, which a warm process has met.
    """
    rows = 1 << (rows - 1).bit_length() if rows <= 256 else -(-rows // 256) * 256
    return rows, min(-(-width // 16) * 16, max(width, max_width))


def zero_shot_outputs(
    logits: np.ndarray, ids: tuple[int, int], multi_label: bool, kind: Output
) -> np.ndarray:
    """Each candidate label's score from its (text, hypothesis) row's logits, as transformers'
    zero-shot pipeline computes it: a softmax of the entailment logits across the labels, or with
    `multi_label` (or a single label) each label's softmax of (contradiction, entailment). "logit":
    the entailment logits, or each label's entailment-minus-contradiction log-odds."""
    entailment, contradiction = ids
    rows = logits.astype(np.float64)
    if multi_label or len(rows) == 1:
        odds = rows[:, entailment] - rows[:, contradiction]
        return odds if kind == "logit" else 1.0 / (1.0 + np.exp(-odds))
    entailed = rows[:, entailment]
    if kind == "logit":
        return entailed
    shifted = np.exp(entailed - entailed.max())
    return shifted / shifted.sum()


def split_types(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Padded rows as token ids and token types (None: no row carries any; see TYPE_STRIDE)."""
    if ids.size == 0 or ids.max() < TYPE_STRIDE:
        return ids, None
    return ids % TYPE_STRIDE, ids // TYPE_STRIDE


def torch_logits(
    module: Any, device: Any, ids: np.ndarray, attention: np.ndarray, types: np.ndarray | None = None
) -> np.ndarray:
    """One pass of a torch classifier (fp32 or a half-precision copy): float32 logits."""
    import torch

    with torch.inference_mode():
        inputs = {"input_ids": torch.from_numpy(ids).to(device)}
        if not attention.all():
            inputs["attention_mask"] = torch.from_numpy(attention).to(device)
        if types is not None:
            inputs["token_type_ids"] = torch.from_numpy(types).to(device)
        return module(**inputs).logits.float().cpu().numpy()


class HalfPrecisionRunner:
    """Torch in half precision, a "fast" candidate where the device has such a path: bf16 (a CPU
    with bf16, a GPU that has it) or fp16 (other GPUs). The copy of the weights is made on first use
    (by the thread that first runs it: the chooser's check, or the engine's).

    Measured on minilm (2 CPU threads, batch 64): bf16 weights ran 2.0-2.4x faster than fp32 per
    pass on a CPU with AMX or AVX512-BF16; bf16 autocast ~12 % slower than bf16 weights, and torch's
    dynamic int8 lost too much (Spearman 0.80-0.88), so torch never runs int8. Whether it beats the
    other candidates end to end is measured where it runs (shared/serving/fast.py)."""

    name = "torch-half"
    max_width = 1 << 30

    def __init__(self, model: TextModel) -> None:
        import torch

        self._model = model
        self._device = model.device
        if model.device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.dtype = torch.bfloat16
        # What its numbers depend on (the cache key): bf16 and fp16, CPU and GPU round apart.
        kind = "bf16" if self.dtype == torch.bfloat16 else "fp16"
        self.identity = f"{self.name}-{model.device.type}-{kind}"
        self._copy: Any = None
        self._made = threading.Lock()

    @classmethod
    def available(cls, model: TextModel) -> bool:
        """The device has a half-precision path worth trying: a GPU, or a CPU with bf16."""
        return model.device.type == "cuda" or (model.device.type == "cpu" and _cpu_has_bf16())

    def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        with self._made:
            if self._copy is None:
                import copy

                self._copy = copy.deepcopy(self._model.model).to(self.dtype).eval()
        return torch_logits(self._copy, self._device, ids, attention)


@cache
def _cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.backends.cpu.get_cpu_capability() in {"AVX512", "AMX"}) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False
