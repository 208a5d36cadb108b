"""Text as the model sees it: the tokenizer and its facts, truncated rows, windows over long texts."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from shared.errors import InvalidRequest
from shared.io.inputs import Input, TextPair, ZeroShot
from shared.kinds import LongText

# A row of a text pair carries each token's type (transformers' token_type_ids) beside its id: id +
# TYPE_STRIDE * type. A masked token keeps its type, rows of pairs never collide with rows of single
# texts in a memo or a cache, and the model splits them apart again (TextModel.forward).
TYPE_STRIDE = 1 << 40


# What a deployment answers for text pairs and zero-shot texts it cannot read, wherever it finds out.
PAIRS_ARE_TRUNCATED = 'long_text "windows" reads one text: a text pair or zero-shot text is truncated'
NO_PAIR_TEMPLATE = (
    "this model's tokenizer has no template for text pairs: send one text (no zero-shot labels)"
)


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
    # A text pair: the second text, each token's sequence (0, 1; -1 for special tokens, whose
    # offsets are (0, 0)), its token types where the model reads them, and which texts truncation
    # shortened ("text", "text_pair"). A token's offsets index into its own sequence's text.
    text_pair: str | None = None
    sequence: np.ndarray | None = None
    types: np.ndarray | None = None
    truncated_texts: tuple[str, ...] = ()
    # Zero-shot: `ids` are the text's part of each (text, hypothesis) row, which every row shares and
    # masks alike; each hypothesis's part (its token types in it) follows it in its row.
    zero_shot: ZeroShot | None = None
    hypotheses: tuple[np.ndarray, ...] = ()

    def rows(self, ids: np.ndarray) -> list[np.ndarray]:
        """The rows the model runs for these ids (this text's, possibly masked): one, a window each, or
        (zero-shot) one per candidate label."""
        if self.zero_shot is not None:
            return [np.concatenate([ids, hypothesis]) for hypothesis in self.hypotheses]
        if self.types is not None:
            return [ids + self.types * TYPE_STRIDE]
        if not self.windows:
            return [ids]
        head, tail = ids[: self.prefix], ids[len(ids) - self.suffix :]
        return [np.concatenate([head, ids[start:end], tail]) for start, end in self.windows]

    def rows_shortened(self, ids: np.ndarray) -> list[np.ndarray]:
        """The rows for this text with some tokens deleted (`ids` shorter than the text's): a
        windowed document's windows are laid out afresh over what is left, at the same width."""
        if not self.windows:
            return [ids]
        width = self.windows[0][1] - self.windows[0][0]
        spans = window_spans(len(ids) - self.prefix - self.suffix, width, self.prefix)
        return replace(self, ids=ids, windows=spans).rows(ids) if spans else [ids]


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


@dataclass(frozen=True)
class TextEncoder:
    """The tokenizer and the facts about it that turn texts into rows. Build it with `text_encoder`."""

    tokenizer: Any
    max_length: int
    mask_token_id: int
    # What pads the short rows of a pass (shared/runtime/padding.py decides); None: rows are never padded.
    pad_token_id: int | None
    keep_prefix: int
    keep_suffix: int
    # Tokens per window of a windowed document (WINDOW_TOKENS, capped by max_length); 0: max_length.
    window_tokens: int = 0
    # A fast tokenizer sets truncation on its one Rust object before each call: two threads that
    # encode at once (a threads pool, HTTP threads) with other settings get each other's (a windowed
    # document came back truncated, its offsets wrong). Every call goes through this lock.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def encode(self, texts: Sequence[Input], long_text: LongText = "truncate") -> list[EncodedText]:
        """Tokenize: truncated to the model's maximum length (saying which texts were), or whole and
        cut into windows (`long_text="windows"`); a pair as transformers' pipeline encodes one."""
        if any(not isinstance(text, str) for text in texts):
            singles = [t for t in texts if isinstance(t, str)]
            encoded = iter(self.encode(singles, long_text) if singles else [])
            return [
                self._encode_other(t, long_text) if not isinstance(t, str) else next(encoded) for t in texts
            ]
        texts = [str(text) for text in texts]
        if long_text == "windows":
            return [self._encode_whole(text) for text in texts]
        with self._lock:
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

    @property
    def takes_pairs(self) -> bool:
        """The tokenizer has a template for pairs: special tokens that set the second text apart
        (a GPT-2 tokenizer only concatenates the two, so its classifier cannot tell them apart)."""
        tokenizer = self.tokenizer
        return tokenizer.num_special_tokens_to_add(pair=True) > tokenizer.num_special_tokens_to_add(
            pair=False
        )

    def _encode_pair(self, pair: TextPair) -> EncodedText:
        """A pair as the pipeline encodes it: the tokenizer's pair template, its token types, and its
        truncation strategy for pairs (longest first), saying which text it shortened."""
        with self._lock:
            enc = self.tokenizer(
                pair.text,
                pair.text_pair,
                truncation=True,
                max_length=self.max_length,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
            )
            whole = [
                len(self.tokenizer(t, add_special_tokens=False)["input_ids"])
                for t in (pair.text, pair.text_pair)
            ]
        sequence = np.array([-1 if s is None else s for s in enc.sequence_ids()], dtype=np.int64)
        kept = [int((sequence == i).sum()) for i in (0, 1)]
        truncated = tuple(
            name for name, n, w in zip(("text", "text_pair"), kept, whole, strict=True) if n < w
        )
        types = np.asarray(enc["token_type_ids"], dtype=np.int64) if "token_type_ids" in enc else None
        return EncodedText(
            text=pair.text,
            ids=np.asarray(enc["input_ids"], dtype=np.int64),
            offsets=[(0, 0) if o is None else (int(o[0]), int(o[1])) for o in enc["offset_mapping"]],
            special=np.asarray(enc["special_tokens_mask"], dtype=bool),
            truncated=bool(truncated),
            text_pair=pair.text_pair,
            sequence=sequence,
            types=types if types is not None and types.any() else None,
            truncated_texts=truncated,
        )

    def _encode_other(self, item: TextPair | ZeroShot, long_text: LongText) -> EncodedText:
        if long_text == "windows":
            raise InvalidRequest(PAIRS_ARE_TRUNCATED)
        if not self.takes_pairs:
            raise InvalidRequest(NO_PAIR_TEMPLATE)
        return self._encode_pair(item) if isinstance(item, TextPair) else self._encode_zero_shot(item)

    def _encode_zero_shot(self, item: ZeroShot) -> EncodedText:
        """The text paired with each label's hypothesis, as the zero-shot pipeline pairs them. Every
        row shares the text's part (with the separators after it), so that one mask masks it alike
        in all of them; where the text must be truncated (only the text is: the pipeline's
        "only_first"), the part is the one that fits beside the longest hypothesis."""
        with self._lock:
            pairs = [
                self.tokenizer(
                    item.text,
                    hypothesis,
                    truncation="only_first",
                    max_length=self.max_length,
                    return_offsets_mapping=True,
                    return_special_tokens_mask=True,
                )
                for hypothesis in item.hypotheses
            ]
            whole = len(self.tokenizer(item.text, add_special_tokens=False)["input_ids"])
        starts = [list(enc.sequence_ids()).index(1) for enc in pairs]  # each hypothesis's first token
        shortest = min(range(len(pairs)), key=lambda k: starts[k])
        cut, base = starts[shortest], pairs[shortest]
        hypotheses = []
        for enc, start in zip(pairs, starts, strict=True):
            ids = np.asarray(enc["input_ids"][start:], dtype=np.int64)
            types = (
                np.asarray(enc["token_type_ids"][start:], dtype=np.int64) if "token_type_ids" in enc else 0
            )
            hypotheses.append(ids + types * TYPE_STRIDE)
        kept = sum(1 for s in base.sequence_ids()[:cut] if s == 0)
        return EncodedText(
            text=item.text,
            ids=np.asarray(base["input_ids"][:cut], dtype=np.int64),
            offsets=[(0, 0) if o is None else (int(o[0]), int(o[1])) for o in base["offset_mapping"][:cut]],
            special=np.asarray(base["special_tokens_mask"][:cut], dtype=bool),
            truncated=kept < whole,
            zero_shot=item,
            hypotheses=tuple(hypotheses),
        )

    def _encode_whole(self, text: str) -> EncodedText:
        with self._lock:
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


def text_encoder(tokenizer: Any, config: Any, window_tokens: int, pad_token_id: int | None) -> TextEncoder:
    """The encoder for a loaded tokenizer and its model's config; `pad_token_id`: padding.pad_token_id_for."""
    return TextEncoder(
        tokenizer=tokenizer,
        max_length=_max_length(tokenizer, config),
        window_tokens=window_tokens,
        mask_token_id=_mask_token_id(tokenizer),
        pad_token_id=pad_token_id,
        **_boundary_tokens(tokenizer),
    )


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
