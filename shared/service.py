"""The per-process Clarion service: owns the loaded model and answers classify / explain calls.

Both the API and the Celery worker hold one `ClarionService` per process, created after the fork.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from shared.classifier import classify_encoded
from shared.errors import ClarionError, ModelNotReady
from shared.explainer import default_explain_batch_size, explain_encoded
from shared.model import TextModel, load_text_model
from shared.results import Classification, Explanation
from shared.schemas import ExplainOptions
from shared.settings import Settings

log = logging.getLogger(__name__)
ModelLoader = Callable[[Settings], TextModel]


class ClarionService:
    """Loads the model once (in the background if asked) and runs classification and explanation."""

    def __init__(self, settings: Settings, loader: ModelLoader = load_text_model) -> None:
        self.settings = settings
        self._loader = loader
        self._model: TextModel | None = None
        self._error: str | None = None
        self._loading = threading.Event()

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
            self._model = self._loader(self.settings)
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
        return classify_encoded(model, model.encode(texts), self.settings.max_batch_size)

    def explain(self, texts: Sequence[str], options: ExplainOptions) -> list[Explanation]:
        model = self.model
        batch = default_explain_batch_size(model, self.settings.explain_batch_size)
        return explain_encoded(model, model.encode(texts), options, batch)
