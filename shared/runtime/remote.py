"""A model Clarion does not host (MODEL_URL): a TextModel whose passes are calls to a predictor.

The engine and the explainer treat it as any model: they encode texts into rows and ask for each
row's outputs. Its rows stand for texts: the predictor reads text, so the model remembers which text
each row it encoded stands for, for as long as the row exists (whoever encoded it holds it until its
pass has run), and a pass sends those texts, REMOTE_BATCH_SIZE to a call, at most
REMOTE_CONCURRENCY calls in flight. Its explanations mask text (SHAP's string masker, masking
"text"), the black-box game SageMaker Clarify plays with a model container.

Its units: with TOKENIZER, that tokenizer's tokens, exactly as for a local model (every granularity);
without it, words and punctuation of the text itself (word, sentence and paragraph granularity),
masked with "..." as SHAP masks without a tokenizer. Clarion truncates nothing: the predictor
reads each text whole, as it would without Clarion.

What only a hosted model can do is refused with a 400 (`check_remote_options`): masking "tokens",
precision "fast" and "amortized", faithfulness, long_text "windows", logits, text pairs and
zero-shot labels.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import regex

from shared.errors import InvalidRequest
from shared.io.inputs import Input
from shared.io.schemas import ExplainOptions
from shared.kinds import LongText, Output, Precision
from shared.runtime.encoding import EncodedText, TextEncoder, text_encoder
from shared.runtime.engine import PassLimits
from shared.runtime.model import TextModel
from shared.runtime.predictors import Predictor, PredictorStatus, predictor_for
from shared.settings import Settings

log = logging.getLogger(__name__)

# Tokens Clarion lets a remote model's text have: none is cut (the predictor truncates as it will).
NO_TRUNCATION = 1 << 24
# How long /ping trusts the predictor's last readiness answer.
_READY_FOR_S = 2.0
_PIECE = regex.compile(
    r"[\p{Han}\p{Hiragana}\p{Katakana}]|[^\s\p{Han}\p{Hiragana}\p{Katakana}\p{P}\p{S}]+|[\p{P}\p{S}]"
)
NOT_HERE = "a remote model (MODEL_URL) is explained by masking its text"
SINGLE_TEXTS = f"{NOT_HERE}: it takes single texts, not text pairs or zero-shot labels"


@dataclass(frozen=True)
class _NoTokenizer:
    """What SHAP's Text masker reads of a tokenizer, where there is none: it masks with "..."."""

    mask_token: str | None = None
    sep_token: str | None = None


@dataclass(frozen=True)
class WordEncoder:
    """Units without a tokenizer: each word (letters and digits), each punctuation mark and each
    character of a script written without spaces is a token; a token's id is a hash of its text."""

    tokenizer: Any = field(default_factory=_NoTokenizer)
    max_length: int = NO_TRUNCATION
    mask_token_id: int = 0
    pad_token_id: int | None = None
    keep_prefix: int = 0
    keep_suffix: int = 0
    window_tokens: int = 0
    takes_pairs: bool = False

    @property
    def window_width(self) -> int:
        return self.max_length

    def encode(self, texts: Sequence[Input], long_text: LongText = "truncate") -> list[EncodedText]:
        out = []
        for text in texts:
            assert isinstance(text, str)
            spans = [m.span() for m in _PIECE.finditer(text)] or [(0, len(text))]
            out.append(
                EncodedText(
                    text=text,
                    ids=np.array([_piece_id(text[a:b]) for a, b in spans], dtype=np.int64),
                    offsets=spans,
                    special=np.zeros(len(spans), dtype=bool),
                    truncated=False,
                )
            )
        return out


def _piece_id(piece: str) -> int:
    return int.from_bytes(hashlib.blake2b(piece.encode(), digest_size=7).digest(), "little")


@dataclass
class _Remembered:
    """A row's text, and how many living rows (encodings of that text) stand for it."""

    text: str
    rows: int = 0


@dataclass
class RemoteModel(TextModel):
    """A model behind MODEL_URL. Build it with `load_remote_model`."""

    predictor: Any = None
    batch_size: int = 32
    concurrency: int = 4
    has_tokenizer: bool = False
    # Each living row's text, by the row's bytes.
    _texts: dict[bytes, _Remembered] = field(default_factory=dict, repr=False)
    _texts_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Rows freed since: counted off under the lock by the next encode or pass. A row is freed in
    # whatever thread drops it last, the garbage collector's included, which may hold the lock.
    _freed: deque[bytes] = field(default_factory=deque, repr=False)
    _calls: ThreadPoolExecutor | None = field(default=None, repr=False)
    _status: tuple[float, PredictorStatus] | None = field(default=None, repr=False)

    runs_locally = False

    @property
    def takes_pairs(self) -> bool:
        return False

    @property
    def pass_limits(self) -> PassLimits:
        """A pass: as many texts as the calls in flight take (no token budget: the predictor's)."""
        return PassLimits(rows=self.batch_size * self.concurrency, tokens=1 << 40)

    def encode(self, texts: Sequence[Input], long_text: LongText = "truncate") -> list[EncodedText]:
        if any(not isinstance(text, str) for text in texts):
            raise InvalidRequest(SINGLE_TEXTS)
        if long_text == "windows":
            raise InvalidRequest(f'{NOT_HERE}: it reads each text whole, no long_text "windows"')
        encoded = [self._own_row(item) for item in self.encoder.encode(texts, "truncate")]
        with self._texts_lock:
            self._count_off_freed()
            for item in encoded:
                self._remember(item)
        return encoded

    def _remember(self, item: EncodedText) -> None:
        """Remember the row's text until the row (its ids array, which the encoded text, its rows
        and the engine's pass all share) is freed: no count of texts can push out a row still
        waiting for its pass, and a finished request's rows leave nothing behind."""
        key = item.ids.tobytes()
        self._texts.setdefault(key, _Remembered(item.text)).rows += 1
        weakref.finalize(item.ids, self._freed.append, key)

    def _count_off_freed(self) -> None:
        """(Under the lock.) Forget the texts whose rows are all freed."""
        while self._freed:
            key = self._freed.popleft()
            remembered = self._texts[key]
            remembered.rows -= 1
            if remembered.rows == 0:
                del self._texts[key]

    def _own_row(self, item: EncodedText) -> EncodedText:
        """A row of its own for each text. Texts that tokenize alike ("Good" and "good" under an
        uncased tokenizer, two characters it does not know, spacing between words) would share a
        row, and so the text remembered for it: the predictor, which reads the text and may tell
        them apart, would be asked about only one of them, for the other's request too. The last
        token between the boundary tokens carries a hash of the text in place of its id: a remote
        model's ids are keys only, no model reads them; boundary tokens keep theirs, which name them
        at token granularity. A text of boundary tokens alone (no character a token holds) keeps
        its row: the predictor reads such texts as nearly nothing anyway."""
        last = len(item.ids) - self.encoder.keep_suffix - 1
        if last < self.encoder.keep_prefix:
            return item
        ids = item.ids.copy()
        ids[last] = -1 - _piece_id(item.text)  # negative: no token's id
        return replace(item, ids=ids)

    def forward(self, rows: Sequence[np.ndarray], precision: Precision = "exact") -> np.ndarray:
        """The scores of the texts these rows stand for: each distinct text once, REMOTE_BATCH_SIZE
        texts to a call, REMOTE_CONCURRENCY calls at once."""
        with self._texts_lock:
            self._count_off_freed()
            texts = []
            for row in rows:
                key = row.tobytes()
                if key not in self._texts:  # a row this model did not encode: a bug, not a request's
                    raise RuntimeError("a row this remote model did not encode, or one already freed")
                texts.append(self._texts[key].text)
            if self._calls is None:  # under the lock: two first callers must not make two pools
                self._calls = ThreadPoolExecutor(self.concurrency, thread_name_prefix="clarion-predictor")
        distinct = list(dict.fromkeys(texts))
        batches = [distinct[i : i + self.batch_size] for i in range(0, len(distinct), self.batch_size)]
        futures = [self._calls.submit(self.predictor.scores, batch, self.labels) for batch in batches]
        scored: dict[str, np.ndarray] = {}
        for batch, future in zip(batches, futures, strict=True):
            scored.update(zip(batch, future.result(), strict=True))  # the first failure is raised
        return np.stack([scored[text] for text in texts]).astype(np.float32)

    def outputs(self, logits: np.ndarray, kind: Output) -> np.ndarray:
        """The predictor's scores, as they came ("logit" is refused before any work)."""
        return logits.astype(np.float64)

    def token_states(self, rows: Sequence[np.ndarray], encoder: Any = None) -> list[np.ndarray]:
        raise InvalidRequest(f'{NOT_HERE}: precision "amortized" needs a model Clarion hosts')

    @property
    def exact_backend(self) -> str:
        return "remote"

    @property
    def fast_backend(self) -> str:
        return "remote"

    def predictor_status(self) -> PredictorStatus:
        """Whether the predictor says it is ready (asked at most every 2 s)."""
        now = time.monotonic()
        if self._status is not None and now - self._status[0] < _READY_FOR_S:
            return self._status[1]
        try:
            reason = self.predictor.ready()
        except Exception as exc:  # a PredictorError, or anything a client library raises
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        status = PredictorStatus(self.predictor.name, reason is None, reason)
        self._status = (now, status)
        return status


def check_remote_options(model: TextModel, options: ExplainOptions) -> None:
    """A 400 for what only a model Clarion hosts explains with."""
    if options.masking == "tokens":
        raise InvalidRequest(
            f'masking "tokens": {NOT_HERE} (masking "text"); token ids mean nothing to the predictor'
        )
    if options.precision != "exact":
        raise InvalidRequest(f'precision "{options.precision}": {NOT_HERE}, exactly ("exact")')
    if options.output == "logit":
        raise InvalidRequest(f'output "logit": {NOT_HERE} and answers scores ("probability")')
    if options.faithfulness:
        raise InvalidRequest(
            f"faithfulness: {NOT_HERE}; faithfulness deletes tokens of a model Clarion hosts"
        )
    if options.long_text == "windows":
        raise InvalidRequest(f'long_text "windows": {NOT_HERE} and reads each text whole')
    if options.granularity == "token" and not getattr(model, "has_tokenizer", False):
        raise InvalidRequest(
            'granularity "token": this remote model has no TOKENIZER; its units are words, sentences '
            "or paragraphs of the text"
        )


def remote_defaults(model: TextModel, options: ExplainOptions) -> ExplainOptions:
    """A remote model's defaults where the request left them out: masking "text", and without a
    TOKENIZER granularity "word"."""
    update: dict[str, Any] = {}
    if "masking" not in options.model_fields_set:
        update["masking"] = "text"
    if "granularity" not in options.model_fields_set and not getattr(model, "has_tokenizer", False):
        update["granularity"] = "word"
    return options.model_copy(update=update) if update else options


def load_remote_model(settings: Settings) -> RemoteModel:
    """The predictor behind MODEL_URL, once it answers that it is ready (until then the service
    says it is loading), with its labels: LABELS, else its V2 metadata's, else the names one of its
    answers holds."""
    predictor = predictor_for(settings)
    encoder, tokenizer_id = _encoder(settings)
    waited = time.monotonic()
    while (reason := _not_ready(predictor)) is not None:
        if time.monotonic() - waited > 10:
            log.warning("waiting for predictor %s: %s", predictor.name, reason)
            waited = time.monotonic()
        time.sleep(1.0)
    labels = _labels(settings, predictor)
    name = settings.model_name or settings.model_url.rstrip("/").rsplit("/", 1)[-1]  # type: ignore[union-attr]
    fingerprint = hashlib.sha256("\n".join([predictor.name, *labels, tokenizer_id]).encode()).hexdigest()[:32]
    log.info("remote model %s at %s: labels %s, units from %s", name, predictor.name, labels, tokenizer_id)
    return RemoteModel(
        model_id=name,
        source="remote",
        fingerprint=fingerprint,
        model=None,
        encoder=encoder,  # type: ignore[arg-type]
        device=None,
        labels=labels,
        activation="none",
        predictor=predictor,
        batch_size=settings.remote_batch_size,
        concurrency=settings.remote_concurrency,
        has_tokenizer=settings.tokenizer is not None,
    )


def _not_ready(predictor: Predictor) -> str | None:
    try:
        return predictor.ready()
    except Exception as exc:
        return getattr(exc, "message", None) or str(exc)


def _labels(settings: Settings, predictor: Predictor) -> list[str]:
    declared = predictor.labels()  # V2: also learns its input's name
    if settings.labels:
        if declared is not None and list(declared) != list(settings.labels):
            log.warning(
                "LABELS %s differ from the predictor's metadata %s: LABELS win", settings.labels, declared
            )
        return list(settings.labels)
    if declared is not None:
        return declared
    found = predictor.probe_labels()
    if found is None:
        from shared.errors import ModelLoadError

        raise ModelLoadError(
            f"predictor {predictor.name} names no labels (its answers hold only numbers): set LABELS to "
            "its score columns' names, in order"
        )
    return found


def _encoder(settings: Settings) -> tuple[TextEncoder | WordEncoder, str]:
    """TOKENIZER's encoder (nothing truncated), or the text's own words; and what names it."""
    if settings.tokenizer is None:
        return WordEncoder(mask_token_id=_piece_id("...")), "words"
    from transformers import AutoTokenizer

    from shared.errors import ModelLoadError

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            settings.tokenizer, trust_remote_code=settings.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"TOKENIZER={settings.tokenizer!r} could not be loaded: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"TOKENIZER={settings.tokenizer!r} is not a fast tokenizer (offsets are needed)")
    encoder = text_encoder(tokenizer, None, 0, tokenizer.pad_token_id)
    return replace(encoder, max_length=NO_TRUNCATION), f"{settings.tokenizer}:{len(tokenizer)}"
