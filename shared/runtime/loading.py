"""Resolve, load, check and fingerprint the classifier: how a TextModel comes to be."""

from __future__ import annotations

import logging
import time
from typing import Any

from shared.errors import ModelLoadError
from shared.runtime.encoding import text_encoder
from shared.runtime.heads import activation_of
from shared.runtime.model import TextModel
from shared.runtime.padding import pad_token_id_for
from shared.runtime.source import ModelLocation, resolve_model
from shared.settings import Settings

log = logging.getLogger(__name__)


def select_device(requested: str) -> Any:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"DEVICE={requested}: CUDA is not available on this machine")
    return device


def load_text_model(settings: Settings, threads: int | None = None) -> TextModel:
    """Resolve, load and warm the model in this process (call it after any fork, never before); a
    model Clarion does not host (MODEL_URL) is its predictor (shared/runtime/remote.py)."""
    if settings.model_url is not None:
        from shared.runtime.remote import load_remote_model

        return load_remote_model(settings)
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
    fingerprint = _fingerprint(location, config, tokenizer)  # the config as saved (before the line below)
    pad_token_id = pad_token_id_for(model, tokenizer, location.model_id)
    text_model = TextModel(
        model_id=location.model_id,
        source=location.source,
        fingerprint=_padded_fingerprint(fingerprint, pad_token_id, tokenizer),
        model=model,
        encoder=text_encoder(tokenizer, config, settings.window_tokens, pad_token_id),
        device=device,
        labels=labels,
        activation=activation_of(config),
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
    """Identity of the loaded model for caches and artifacts: config, tokenizer and the weight files'
    content. Neither a local folder's path nor its files' times are part of it: the same folder named
    relatively or absolutely, moved, copied, or unpacked again from its model.tar.gz (a model
    distilled on one machine, served from /opt/ml/model on another) is the same model; a hub name
    stands for its weights."""
    import hashlib
    from pathlib import Path

    folder = Path(location.model_ref)
    names = [] if folder.is_dir() else [location.model_ref]
    if not Path(location.tokenizer_ref).is_dir():
        names.append(location.tokenizer_ref)
    parts = [*names, config.to_json_string(), str(len(tokenizer))]
    if folder.is_dir():
        for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            parts.append(f"{weights.name}:{_content_digest(weights)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _content_digest(path: Any) -> str:
    """A weight file's BLAKE2b digest: about a second per GB read once at start, which the load reads
    anyway, where times would call every fresh copy of the same weights another model."""
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def _padded_fingerprint(fingerprint: str, pad_token_id: int | None, tokenizer: Any) -> str:
    """The fingerprint, changed where rows are padded otherwise than they once were (with the
    tokenizer's pad id, else 0), which gave decoder heads wrong scores: no cache entry nor job made
    with that padding is taken for this model's. Where the padding is the same (nearly every encoder),
    the fingerprint, and what was distilled for it, stay as they were."""
    import hashlib

    before = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if pad_token_id == before:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}\npad:{pad_token_id}".encode()).hexdigest()[:32]
