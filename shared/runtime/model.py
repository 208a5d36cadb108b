"""The loaded classifier: tokenizer, torch model, labels, and the one way Clarion runs a forward pass."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import ModelLoadError
from shared.kinds import Activation, LongText, Output, Precision
from shared.runtime.source import ModelLocation, resolve_model
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedText:
    """A text as the model sees it: token ids and character offsets, either truncated to the model's
    maximum length (one row) or whole, seen through overlapping windows of at most that length."""

    text: str
    ids: np.ndarray
    offsets: list[tuple[int, int]]
    special: np.ndarray  # True where the token is a special token ([CLS], [SEP], ...)
    truncated: bool
    # Windowed documents: each window's [start, end) over `ids`, between the boundary tokens that
    # every window repeats ([CLS] ... [SEP]). Empty: `ids` is the one row.
    windows: tuple[tuple[int, int], ...] = ()
    prefix: int = 0  # boundary tokens at the start and end of `ids` (windowed documents)
    suffix: int = 0

    def rows(self, ids: np.ndarray) -> list[np.ndarray]:
        """The rows the model runs for these ids (this text's, possibly masked): one, or a window each."""
        if not self.windows:
            return [ids]
        head, tail = ids[: self.prefix], ids[len(ids) - self.suffix :]
        return [np.concatenate([head, ids[start:end], tail]) for start, end in self.windows]


# Windows overlap by a quarter, so that every token is seen with some context on either side.
WINDOW_OVERLAP = 0.25


def window_spans(content: int, width: int, first: int) -> tuple[tuple[int, int], ...]:
    """Windows of `width` tokens over `content` tokens starting at index `first`, overlapping by at
    least WINDOW_OVERLAP and spread evenly, so that every window is full (equal weight is fair)."""
    if content <= width:
        return ()
    stride = max(1, int(width * (1 - WINDOW_OVERLAP)))
    count = -(-(content - width) // stride) + 1
    starts = [round(i * (content - width) / (count - 1)) for i in range(count)]
    return tuple((first + start, first + start + width) for start in starts)


@dataclass
class TextModel:
    """A sequence classifier ready to run. Build it with `load_text_model`."""

    model_id: str
    source: str
    fingerprint: str  # changes whenever the weights, config or tokenizer could differ
    model: Any
    tokenizer: Any
    device: Any
    labels: list[str]
    activation: Activation
    max_length: int
    mask_token_id: int
    pad_token_id: int
    keep_prefix: int
    keep_suffix: int
    # Tokens per window of a windowed document (WINDOW_TOKENS, capped by max_length); 0: max_length.
    window_tokens: int = 0
    # Set when exact passes run elsewhere than torch (shared/runtime/onnx.py): (ids, attention) -> logits.
    exact_runner: Any = field(default=None, repr=False)
    _fast_model: Any = field(default=None, repr=False)

    def encode(self, texts: Sequence[str], long_text: LongText = "truncate") -> list[EncodedText]:
        """Tokenize: truncated to the model's maximum length (saying which texts were), or whole and
        cut into windows (`long_text="windows"`)."""
        if long_text == "windows":
            return [self._encode_whole(text) for text in texts]
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_overflowing_tokens=True,
            return_special_tokens_mask=True,
        )
        sample_of_row = enc["overflow_to_sample_mapping"]
        encoded: list[EncodedText | None] = [None] * len(texts)
        truncated = [False] * len(texts)
        for row, sample in enumerate(sample_of_row):
            if encoded[sample] is not None:
                truncated[sample] = True  # a second window means the text did not fit
                continue
            offsets = [(0, 0) if o is None else (int(o[0]), int(o[1])) for o in enc["offset_mapping"][row]]
            encoded[sample] = EncodedText(
                text=texts[sample],
                ids=np.asarray(enc["input_ids"][row], dtype=np.int64),
                offsets=offsets,
                special=np.asarray(enc["special_tokens_mask"][row], dtype=bool),
                truncated=False,
            )
        out = []
        for item, was_truncated in zip(encoded, truncated, strict=True):
            assert item is not None
            out.append(EncodedText(item.text, item.ids, item.offsets, item.special, was_truncated))
        return out

    def _encode_whole(self, text: str) -> EncodedText:
        enc = self.tokenizer(
            text,
            truncation=False,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            verbose=False,
        )
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        width = self.window_width - self.keep_prefix - self.keep_suffix
        content = len(ids) - self.keep_prefix - self.keep_suffix
        return EncodedText(
            text=text,
            ids=ids,
            offsets=[(0, 0) if o is None else (int(o[0]), int(o[1])) for o in enc["offset_mapping"]],
            special=np.asarray(enc["special_tokens_mask"], dtype=bool),
            truncated=False,
            windows=window_spans(content, width, self.keep_prefix),
            prefix=self.keep_prefix,
            suffix=self.keep_suffix,
        )

    @property
    def window_width(self) -> int:
        """Tokens per window, boundary tokens included: WINDOW_TOKENS, at most the maximum length."""
        return min(self.window_tokens or self.max_length, self.max_length)

    @property
    def cache_identity(self) -> str:
        """What cached results depend on besides the request: the model, and the window width."""
        return f"{self.fingerprint}:w{self.window_width}"

    def document_outputs(self, encoded: EncodedText, logits: np.ndarray, kind: Output) -> np.ndarray:
        """A text's outputs from the logits of its rows: a windowed document's is the mean of its
        windows' outputs (probabilities: the mean probability, as if each window voted with its
        confidence; no window's length or position weighs more, since all are full)."""
        return self.outputs(logits, kind).mean(axis=0)

    def forward(self, rows: Sequence[np.ndarray], precision: Precision = "exact") -> np.ndarray:
        """Raw logits (rows x labels, float32) of ONE forward pass over token-id rows, padded to the
        longest. Only the engine (shared/runtime/engine.py) calls this while serving: it decides what
        shares a pass, and it is the only thread that touches the model."""
        wanted, width = len(rows), max(len(r) for r in rows)
        if precision == "fast" and self.device.type == "cuda":
            count, width = _shape_bucket(wanted, width, self.max_length)
            rows = [*rows, *[rows[0]] * (count - wanted)]  # bucket fillers: copies, dropped below
        ids, attention = self.padded(rows, width)
        runner = self.exact_runner  # read once: a background load may set it between passes
        # Without a half-precision path (a CPU without bf16) "fast" runs the fp32 weights: then it
        # takes the exact runner too, or fast would be slower than exact.
        fp32 = precision == "exact" or self._model_for(precision) is self.model
        if fp32 and runner is not None and width <= runner.max_width:
            logits = runner(ids, attention)
        else:
            logits = self.torch_forward(ids, attention, precision)
        return logits[:wanted]

    def padded(self, rows: Sequence[np.ndarray], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids padded to `width` (default: the longest row) and their attention mask."""
        width = width or max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for j, row in enumerate(rows):
            ids[j, : len(row)] = row
            attention[j, : len(row)] = 1
        return ids, attention

    def torch_forward(self, ids: np.ndarray, attention: np.ndarray, precision: Precision) -> np.ndarray:
        import torch

        with torch.inference_mode():
            model = self._model_for(precision)
            inputs = {"input_ids": torch.from_numpy(ids).to(self.device)}
            if not attention.all():
                inputs["attention_mask"] = torch.from_numpy(attention).to(self.device)
            return model(**inputs).logits.float().cpu().numpy()

    @property
    def exact_backend(self) -> str:
        return "torch" if self.exact_runner is None else self.exact_runner.name

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

    def _model_for(self, precision: Precision) -> Any:
        """The fp32 model, or for "fast" a half-precision copy made on first use (by the engine's
        thread, the only one that runs passes).

        Measured on minilm (2 CPU threads, batch 64): bf16 weights run 2.0-2.4x faster than fp32 with
        a median Spearman of 0.999 between fast and exact attributions; bf16 autocast is ~12 % slower
        than bf16 weights, and dynamic int8 loses too much (Spearman 0.80-0.88), so it is not used.
        """
        if precision == "exact":
            return self.model
        if self._fast_model is None:
            self._fast_model = _half_precision_copy(self.model, self.device)
        return self._fast_model


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


def _half_precision_copy(model: Any, device: Any) -> Any:
    import copy

    import torch

    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif device.type == "cpu" and _cpu_has_bf16():
        dtype = torch.bfloat16
    else:
        log.warning("no fast half-precision path on %s: precision=fast runs in fp32", device)
        return model
    return copy.deepcopy(model).to(dtype).eval()


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


def _cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.backends.cpu.get_cpu_capability() in {"AVX512", "AMX"}) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


def select_device(requested: str) -> Any:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"DEVICE={requested}: CUDA is not available on this machine")
    return device


def load_text_model(settings: Settings, threads: int | None = None) -> TextModel:
    """Resolve, load and warm the model in this process (call it after any fork, never before)."""
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # The caller's role decides (API worker or Celery pool process); processes x threads <= cores.
    threads = threads or settings.threads_per_http_process
    torch.set_num_threads(threads)
    started = time.perf_counter()
    location = resolve_model(settings)
    local_only = location.source != "hub"
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location.tokenizer_ref,
            trust_remote_code=settings.trust_remote_code,
            local_files_only=local_only and settings.tokenizer is None,
        )
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            location.model_ref,
            trust_remote_code=settings.trust_remote_code,
            local_files_only=local_only,
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not load model {location.model_id}: {_load_error(exc)}") from None
    _check_head(location.model_id, model, loading)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"tokenizer of {location.model_id} is not a fast tokenizer (offsets are needed)")
    device = select_device(settings.device)
    model.to(device).eval()
    config = model.config
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    text_model = TextModel(
        model_id=location.model_id,
        source=location.source,
        fingerprint=_fingerprint(location, config, tokenizer),
        model=model,
        tokenizer=tokenizer,
        device=device,
        labels=labels,
        activation=activation_of(config),
        max_length=_max_length(tokenizer, config),
        window_tokens=settings.window_tokens,
        mask_token_id=_mask_token_id(tokenizer),
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        **_boundary_tokens(tokenizer),
    )
    # Warm up: the first forward pass allocates and picks kernels; do it before reporting healthy.
    text_model.forward([text_model.encode(["warm up"])[0].ids])
    log.info(
        "model %s loaded from %s on %s in %.1fs (%d threads)",
        location.model_id,
        location.source,
        device,
        time.perf_counter() - started,
        threads,
    )
    return text_model


def _load_error(exc: Exception) -> str:
    """transformers' reason, with the setting that lifts it where custom code is what it refused."""
    message = str(exc).strip()
    if "trust_remote_code" in message:
        return (
            "the model (or its tokenizer) needs its own code from the repository, which Clarion runs only "
            f"with TRUST_REMOTE_CODE=true (transformers: {message.splitlines()[0]})"
        )
    return message


def _check_head(model_id: str, model: Any, loading: dict[str, Any]) -> None:
    """Refuse a checkpoint whose classification head was not in its weights: transformers would
    give it a random head and every score would be noise (a base model, or another task's head)."""
    prefixes = {
        name.split(".")[0]
        for name, _ in model.named_parameters()
        if not name.startswith(model.base_model_prefix + ".")
    }
    missing = sorted(k for k in loading.get("missing_keys", ()) if k.split(".")[0] in prefixes)
    if missing:
        raise ModelLoadError(
            f"{model_id} has no trained sequence-classification head: its weights lack {', '.join(missing)} "
            "(a base model or another task's checkpoint; Clarion serves fine-tuned classifiers)"
        )


def _fingerprint(location: ModelLocation, config: Any, tokenizer: Any) -> str:
    """Identity of the loaded model for caches: config, tokenizer and the weight files' size and time."""
    import hashlib
    from pathlib import Path

    parts = [location.model_ref, location.tokenizer_ref, config.to_json_string(), str(len(tokenizer))]
    folder = Path(location.model_ref)
    if folder.is_dir():
        for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            stat = weights.stat()
            parts.append(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _max_length(tokenizer: Any, config: Any) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 100_000:
        return limit
    return min(int(getattr(config, "max_position_embeddings", 512) or 512), 512)


def _mask_token_id(tokenizer: Any) -> int:
    """SHAP masks with the tokenizer's mask token, else with the id of "..."."""
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    ids = tokenizer("...")["input_ids"]
    return int(ids[_boundary_tokens(tokenizer)["keep_prefix"]])


def _boundary_tokens(tokenizer: Any) -> dict[str, int]:
    """How many special tokens the tokenizer puts before and after a text (kept unmasked by SHAP)."""
    null_tokens = tokenizer("")["input_ids"]
    if len(null_tokens) == 1:
        eos = tokenizer.special_tokens_map.get("eos_token")
        is_eos = eos is not None and tokenizer.decode(null_tokens[0]) == eos
        return {"keep_prefix": 0 if is_eos else 1, "keep_suffix": 1 if is_eos else 0}
    return {"keep_prefix": len(null_tokens) // 2, "keep_suffix": len(null_tokens) // 2}
