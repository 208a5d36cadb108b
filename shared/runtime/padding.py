"""Padding: the id that fills the short rows of a pass, or that this model's rows are never padded.

An encoder's head reads what the attention mask lets it see, so any id pads its rows. A decoder
classifier's head (transformers' GPT-2, GPT-Neo, OPT, Bloom, Llama, Mistral, Qwen, Gemma, Phi, ...)
reads each row's last token, found by `config.pad_token_id`: the rightmost token that is not it.
Hence, for every model:

- the config's pad id, where it is set, pads the rows, whatever the tokenizer's is (a GPT-2
  classifier has one in its config and none in its tokenizer): a padded row's head reads the token
  it reads in the row alone, which is how transformers' pipeline runs a text. A text that ends in
  that id (pad = eos, a text ending in eos) is read as transformers reads it alone, too;
- a decoder head without one takes a single row's last position and refuses passes of several
  (transformers raises). Its rows are never padded: each pass holds rows of one length only, and the
  head is told that no id pads (NO_TOKEN, which no row holds), so that it reads every row's last
  position in a pass of any size, as it reads a single row's. Checked here, at load;
- an encoder without a pad id in its config pads with the tokenizer's, else 0: its mask hides it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.errors import ModelLoadError

# The pad id a decoder head is given when nothing pads its rows: no token has it, so its search for
# the last token that is not padding finds every row's last position.
NO_TOKEN = -1
PROBE_TEXT = "A check of the head, once more."


def pad_token_id_for(model: Any, tokenizer: Any, model_id: str) -> int | None:
    """The id this model's rows are padded with, or None: they are never padded (a decoder head
    without a pad id in its config, which this marks with NO_TOKEN)."""
    config = text_config(model.config)
    if config.pad_token_id is not None:
        return int(config.pad_token_id)
    row = np.asarray(tokenizer(PROBE_TEXT)["input_ids"], dtype=np.int64)
    alone = _logits(model, [row])
    try:
        _logits(model, [row, row])
    except ValueError:  # transformers' decoder heads: "Cannot handle batch sizes > 1 if no padding token"
        config.pad_token_id = NO_TOKEN
        if not _reads_last_positions(model, row, alone):
            raise ModelLoadError(
                f"{model_id} has no pad id, and its head refuses a pass of two rows, or reads other than "
                "each row's last token there: set pad_token_id in its config.json"
            ) from None
        return None
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0


def _reads_last_positions(model: Any, row: np.ndarray, alone: np.ndarray) -> bool:
    """A pass of two copies of `row` gives each the logits of `row` alone."""
    try:
        together = _logits(model, [row, row])
    except ValueError:
        return False
    return bool(np.allclose(together, np.vstack([alone, alone]), rtol=1e-3, atol=1e-4))


def text_config(config: Any) -> Any:
    """The config a text head reads its pad id from (a multimodal model's text part: transformers'
    generic heads read `config.get_text_config()`)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _logits(model: Any, rows: list[np.ndarray]) -> np.ndarray:
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        ids = torch.from_numpy(np.stack(rows)).to(device)
        return model(input_ids=ids).logits.float().cpu().numpy()
