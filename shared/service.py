"""The per-process Clarion service: owns the loaded model and answers classify / explain calls.

Both the API and the Celery worker hold one `ClarionService` per process, created after the fork.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from shared.batching import MicroBatcher
from shared.cache import (
    Cache,
    ExplanationCache,
    MemoryCache,
    NoCache,
    RedisCache,
    classification_key,
    explanation_key,
    through_cache,
)
from shared.classifier import classify_encoded
from shared.errors import ClarionError, ModelNotReady
from shared.explainer import default_explain_batch_size, explain_encoded
from shared.model import TextModel, load_text_model
from shared.results import Classification, Explanation
from shared.schemas import ExplainOptions
from shared.settings import Settings

log = logging.getLogger(__name__)
ModelLoader = Callable[[Settings, int | None], TextModel]


class ClarionService:
    """Loads the model once (in the background if asked) and runs classification and explanation."""

    def __init__(
        self, settings: Settings, threads: int | None = None, loader: ModelLoader = load_text_model
    ) -> None:
        """`threads`: torch threads for this process (default: the API's share of the cores)."""
        self.settings = settings
        self._threads = threads
        self._loader = loader
        self._model: TextModel | None = None
        self._batcher: MicroBatcher | None = None
        self._error: str | None = None
        self._loading = threading.Event()
        self._cache = _explanation_cache(settings)
        self._classifications: Cache[Classification] = (
            MemoryCache(settings.explanation_cache_size) if settings.explanation_cache_size else NoCache()
        )

    # ---- lifecycle --------------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load in a daemon thread so the HTTP server can answer /ping with 503 meanwhile."""
        if self._loading.is_set():
            return
        self._loading.set()
        threading.Thread(target=self._load, name="clarion-model-loader", daemon=True).start()

    def load(self) -> TextModel:
        """Load synchronously (worker processes, tests); raise if loading fails."""
        self._loading.set()
        self._load()
        return self.model

    def _load(self) -> None:
        try:
            model = self._loader(self.settings, self._threads)
            if self.settings.micro_batching:
                self._batcher = MicroBatcher(
                    lambda encoded: classify_encoded(model, encoded, self.settings.max_batch_size),
                    max_rows=self.settings.max_batch_size,
                    window_s=self.settings.batch_window_ms / 1000,
                )
            self._model = model
        except ClarionError as exc:
            self._error = exc.message
            log.error("model failed to load: %s", exc.message)
        except Exception as exc:  # any library error: keep the process up and say why on /ping
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> TextModel:
        if self._model is None:
            reason = f"model failed to load: {self._error}" if self._error else "model is loading"
            raise ModelNotReady(reason)
        return self._model

    def status(self) -> dict[str, object]:
        if self._model is not None:
            return {"status": "healthy", "model": self._model.model_id, "labels": self._model.labels}
        if self._error is not None:
            return {"status": "failed", "error": self._error}
        return {"status": "loading"}

    # ---- work ---------------------------------------------------------------------------------

    def classify(self, texts: Sequence[str]) -> list[Classification]:
        model = self.model

        def compute(missing: list[int]) -> list[Classification]:
            encoded = model.encode([texts[i] for i in missing])  # tokenized in the request's thread
            if self._batcher is not None:
                return self._batcher.classify(encoded)
            return classify_encoded(model, encoded, self.settings.max_batch_size)

        keys = [classification_key(model.fingerprint, text) for text in texts]
        return through_cache(self._classifications, keys, compute)

    def explain(
        self, texts: Sequence[str], options: ExplainOptions, deadline: float | None = None
    ) -> list[Explanation]:
        """Explain texts; cached ones come from the cache, the rest are computed together."""
        model = self.model
        batch = default_explain_batch_size(model, self.settings.explain_batch_size)

        def compute(missing: list[int]) -> list[Explanation]:
            encoded = model.encode([texts[i] for i in missing])
            return explain_encoded(model, encoded, options, batch, deadline)

        keys = [explanation_key(model.fingerprint, text, options, batch) for text in texts]
        return through_cache(self._cache, keys, compute)


def _explanation_cache(settings: Settings) -> ExplanationCache:
    if settings.explanation_cache_size == 0:
        return NoCache()
    if settings.jobs_are_async and settings.redis_store_url:
        from shared.job_store import redis_client

        return RedisCache(redis_client(settings.redis_store_url), settings.job_result_ttl_s)
    return MemoryCache(settings.explanation_cache_size)
