"""The per-process Clarion service: owns the loaded model and its engine, answers classify / explain.

Both the API and the Celery worker hold one `ClarionService` per process, created after the fork.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shared import metrics
from shared.errors import ClarionError, InvalidRequest, ModelNotReady
from shared.explanation.amortized import (
    AmortizedExplainer,
    AmortizedUnavailable,
    explain_amortized,
    load_amortized,
)
from shared.explanation.explainer import check_options, check_pair_options, explain_encoded
from shared.io.inputs import Input, ZeroShot
from shared.io.results import (
    API_VERSION,
    Classification,
    Explanation,
    Health,
    Prediction,
    body,
    text_response,
)
from shared.io.schemas import ExplainOptions, InvocationParameters
from shared.kinds import LongText
from shared.runtime.encoding import NO_PAIR_TEMPLATE, EncodedText
from shared.runtime.engine import Engine, Ticket, pass_limits_for
from shared.runtime.loading import load_text_model
from shared.runtime.model import HalfPrecisionRunner, TextModel
from shared.runtime.onnx import OnnxRunner, onnx_exact, onnx_int8
from shared.runtime.remote import SINGLE_TEXTS, RemoteModel, check_remote_options, remote_defaults
from shared.serving.cache import (
    ExplanationCache,
    RedisCache,
    classification_key,
    explanation_key,
    fast_backend_of,
)
from shared.serving.classifier import classification_of, run_unmasked
from shared.serving.fast import Candidate, FastChoice, choice_path, choose, save_choice, saved_choice
from shared.settings import Settings
from shared.storage.memory import Cache, MemoryCache, NoCache, through_cache

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
        self._engine: Engine | None = None
        self._error: str | None = None
        self._amortized: AmortizedExplainer | None = None
        self._amortized_error: str | None = None
        # True until "fast" has its runner (measured in the background after the exact graph
        # attaches): meanwhile fast explanations are not cached (see `_computed_by`).
        self._fast_provisional = False
        self._fast_choice = FastChoice("measuring")
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
            settings = self.settings
            started = time.monotonic()
            model = self._loader(settings, self._threads)
            metrics.MODEL_LOAD_SECONDS.set(time.monotonic() - started)
            metrics.build_info(model.model_id)
            if isinstance(model, RemoteModel):  # its passes are the predictor's: no backends to prepare
                self._fast_choice = FastChoice("forced", "remote", "a remote model explains exactly only")
                self._engine = Engine(model, model.pass_limits)
                return
            if settings.exact_backend == "onnxruntime":  # asked for: loading fails without it
                model.exact_runner = onnx_exact(
                    model, settings.model_cache_dir, self._backend_threads, settings.onnx_fusion
                )
            attach_later = settings.exact_backend == "auto" and model.device.type == "cpu"
            self._fast_provisional = True  # before serving starts
            limits = pass_limits_for(
                model, settings.pass_rows, settings.pass_tokens, settings.pass_spare_tokens
            )
            self._engine = Engine(model, limits, merge_classifications=settings.micro_batching)
            self._load_amortized(model)
            # Serve with torch at once; exact passes move to onnxruntime once it is ready (the export
            # takes seconds on a first start, and no cold start should wait for it), then "fast" is
            # chosen by measuring. Not a daemon: a process that exits mid-export waits for it
            # (seconds) rather than killing the exporter's native threads, which aborts the interpreter.
            threading.Thread(
                target=self._prepare_backends, args=(model, attach_later), name="clarion-backends"
            ).start()
        except ClarionError as exc:
            self._error = exc.message
            log.error("model failed to load: %s", exc.message)
        except Exception as exc:  # any library error: keep the process up and say why on /ping
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    def _load_amortized(self, model: TextModel) -> None:
        """AMORTIZED_EXPLAINER's artifact; one for another model, or too weak, is refused loudly (the
        service still serves exact and fast; precision "amortized" is then a 400 saying why)."""
        directory = self.settings.amortized_explainer
        if not directory:
            return
        try:
            self._amortized = load_amortized(directory, model, self.settings.amortized_min_spearman)
            log.info("amortized explainer loaded from %s: %s", directory, self._amortized.validation)
        except AmortizedUnavailable as exc:
            self._amortized_error = exc.message
            log.error("REFUSED the amortized explainer: %s", exc.message)

    def amortized(self) -> AmortizedExplainer:
        """The loaded artifact, or the 400 that says why there is none."""
        if self._amortized is None:
            raise AmortizedUnavailable(
                self._amortized_error
                or 'precision "amortized" needs AMORTIZED_EXPLAINER: the folder `clarion distill` '
                "wrote for this model"
            )
        return self._amortized

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this service explains with: "amortized" only with an artifact loaded."""
        return ("exact", "fast", "amortized") if self._amortized is not None else ("exact", "fast")

    def check_options(self, options: ExplainOptions, inputs: Sequence[Input] = ()) -> None:
        """Raise InvalidRequest for options this service cannot explain on `inputs` (before a job is
        accepted): labels it does not score, zero-shot labels without an NLI model, what text pairs
        and zero-shot texts cannot take (a tokenizer without a pair template among them), an unusable
        amortized artifact."""
        if not self.model.runs_locally:
            if any(not isinstance(item, str) for item in inputs):
                raise InvalidRequest(SINGLE_TEXTS)
            check_remote_options(self.model, remote_defaults(self.model, options))
        zero_shot = next((item for item in inputs if isinstance(item, ZeroShot)), None)
        check_options(self.model, options, zero_shot.candidate_labels if zero_shot else None)
        if zero_shot is not None:
            self.model.entailment_ids()  # an NLI model, or a 400 that says why
        if any(not isinstance(item, str) for item in inputs):
            if not self.model.takes_pairs:
                raise InvalidRequest(NO_PAIR_TEMPLATE)
            check_pair_options(options)
        if options.precision == "amortized":
            self.amortized().check(options)

    @property
    def _backend_threads(self) -> int:
        return self._threads or self.settings.threads_per_http_process

    def _prepare_backends(self, model: TextModel, attach_onnx: bool) -> None:
        try:
            if attach_onnx:
                self._attach_onnx(model)
            self._choose_fast(model)
        except Exception:  # never leave fast provisional for good: it runs exact's path
            log.exception("fast: no runner chosen; it runs exact's path")
            self._fast_choice = FastChoice("chosen", "exact", "choosing failed (see the log): exact's path")
        finally:
            self._fast_provisional = False  # fast's backend changes no more

    def _attach_onnx(self, model: TextModel) -> None:
        try:
            settings = self.settings
            model.exact_runner = onnx_exact(
                model, settings.model_cache_dir, self._backend_threads, settings.onnx_fusion
            )
        except ClarionError as exc:
            log.warning("exact passes stay on torch: %s", exc.message)
        except Exception:  # any exporter or runtime error: torch keeps serving
            log.exception("exact passes stay on torch")

    def _choose_fast(self, model: TextModel) -> None:
        """Give "fast" its runner: FAST_BACKEND's, or the candidate that measured best here."""
        forced = self.settings.fast_backend
        # Forced to exact's path, fast needs no candidate: no int8 graph is built for nothing.
        candidates = [] if forced == "exact" else self._fast_candidates(model)
        if forced == "auto":
            path = choice_path(model, self.settings.model_cache_dir, self._backend_threads)
            choice = saved_choice(path, candidates)
            if choice is None:
                choice = choose(model, candidates, self._explain_with)
                save_choice(path, choice)
        elif forced == "exact":
            choice = FastChoice("forced", "exact", "FAST_BACKEND=exact")
        elif any(c.name == forced for c in candidates):
            choice = FastChoice("forced", forced, f"FAST_BACKEND={forced}")
        else:
            have = [c.name for c in candidates] or "none"
            choice = FastChoice("forced", "exact", f"FAST_BACKEND={forced} is not available here "
                                f"(candidates: {have}): fast runs exact's path")  # fmt: skip
        model.fast_runner = next((c.runner for c in candidates if c.name == choice.chosen), None)
        self._fast_choice = choice
        log.info("fast: %s (%s)", choice.chosen, choice.reason)

    def _fast_candidates(self, model: TextModel) -> list[Candidate]:
        """The paths "fast" could take on this device: torch in half precision where it has one, the
        int8 graph where exact runs on onnxruntime (FAST_INT8)."""
        candidates = []
        if HalfPrecisionRunner.available(model):
            candidates.append(Candidate("torch-half", HalfPrecisionRunner(model)))
        if isinstance(model.exact_runner, OnnxRunner) and self.settings.fast_int8:
            try:
                int8 = onnx_int8(model, model.exact_runner, self._backend_threads)
                candidates.append(Candidate(int8.name, int8))
            except ClarionError as exc:
                log.warning("no int8 graph for fast: %s", exc.message)
            except Exception:  # a quantizer or runtime error: no int8 candidate
                log.exception("no int8 graph for fast")
        return candidates

    def _explain_with(self, model: TextModel, texts: Sequence[str], precision: str) -> list[Explanation]:
        """The check's explanations (shared/serving/fast.py), through an engine of their own over
        `model` (the served one, or a copy whose fast runner is a candidate): passes still take turns
        with the serving engine's (the model's lock)."""
        engine = Engine(model, self.engine.limits)
        try:
            options = ExplainOptions(max_evals=200, granularity="word", labels="all", precision=precision)
            return explain_encoded(engine, model.encode(texts), options)
        finally:
            engine.stop()

    def _computed_by(self, model: TextModel, options: ExplainOptions) -> str | None:
        """What makes an explanation's numbers besides the model and the options, for its cache key:
        the artifact of "amortized" (its 400 if there is none), the backend of "fast", nothing for
        "exact". None while fast's backend may still change mid-request: not cached then."""
        if options.precision == "amortized":
            return self.amortized().fingerprint
        if options.precision == "fast":
            return None if self._fast_provisional else fast_backend_of(model)
        return ""

    @property
    def ready(self) -> bool:
        """Loaded; and a remote model's predictor says it is ready."""
        if self._engine is None:
            return False
        model = self._engine.model
        return not isinstance(model, RemoteModel) or model.predictor_status().ready

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            reason = f"model failed to load: {self._error}" if self._error else "model is loading"
            raise ModelNotReady(reason, loading=self._error is None)
        return self._engine

    @property
    def model(self) -> TextModel:
        return self.engine.model

    def status(self) -> Health:
        if self._engine is not None:
            model = self._engine.model
            if isinstance(model, RemoteModel):
                return _remote_health(model)
            return Health(
                status="healthy",
                api_version=API_VERSION,
                model=model.model_id,
                labels=model.labels,
                exact_backend=model.exact_backend,
                fast_backend=model.fast_backend,
                fast=self._fast_choice.report(),
                **self._amortized_status(),
            )
        if self._error is not None:
            return Health(status="failed", api_version=API_VERSION, error=self._error)
        return Health(status="loading", api_version=API_VERSION)

    @property
    def fast_choice(self) -> FastChoice:
        """How "fast" was chosen (status "measuring" until it is), with the candidates measured."""
        return self._fast_choice

    def _amortized_status(self) -> dict[str, Any]:
        if self._amortized is not None:
            return {"amortized": {"status": "ready", "validation": self._amortized.validation}}
        if self._amortized_error is not None:
            return {"amortized": {"status": "refused", "error": self._amortized_error}}
        return {}

    # ---- work ---------------------------------------------------------------------------------

    def predict(
        self,
        texts: Sequence[Input],
        long_text: LongText = "truncate",
        options: ExplainOptions | None = None,
        ticket: Ticket | None = None,
    ) -> list[Prediction]:
        """The use case every front end calls (HTTP, jobs, the CLI, Clarify, Batch Transform): each
        text's classification and, given options, its explanation. Cached answers come from the
        caches; of the rest, each text is tokenized once and its unmasked rows run once, for both."""
        engine = self.engine
        model = engine.model
        if options is not None and not model.runs_locally:
            options = remote_defaults(model, options)
            check_remote_options(model, options)
        if options is not None:
            long_text = options.long_text
            if any(not isinstance(text, str) for text in texts):  # text pairs, zero-shot texts
                check_pair_options(options)
        ran: dict[int, tuple[EncodedText, np.ndarray]] = {}

        def run(indexes: list[int]) -> list[tuple[EncodedText, np.ndarray]]:
            new = [i for i in indexes if i not in ran]
            if new:
                encoded = model.encode([texts[i] for i in new], long_text)  # in the request's thread
                ran.update(
                    zip(new, zip(encoded, run_unmasked(engine, encoded, ticket), strict=True), strict=True)
                )
            return [ran[i] for i in indexes]

        def explain(missing: list[int]) -> list[Explanation]:
            assert options is not None
            done = run(missing)
            encoded, logits = [e for e, _ in done], [row for _, row in done]
            if options.precision == "amortized":
                return explain_amortized(
                    engine, self.amortized(), encoded, [r[0] for r in logits], options, ticket
                )
            explanations = explain_encoded(engine, encoded, options, ticket, logits)
            metrics.EVALUATIONS.inc(sum(e.evaluations for e in explanations))
            return explanations

        def classify(missing: list[int]) -> list[Classification]:
            return [classification_of(model, encoded, logits) for encoded, logits in run(missing)]

        identity = model.cache_identity
        explanations: list[Explanation | None] = [None] * len(texts)
        if options is not None:
            computed_by = self._computed_by(model, options)
            cache = self._cache if computed_by is not None else NoCache()
            keys = [explanation_key(identity, text, options, computed_by or "") for text in texts]
            with metrics.EXPLAIN_SECONDS.time():
                explanations = list(through_cache(cache, keys, explain, "explanations", keep=_finished))
        keys = [classification_key(identity, text, long_text) for text in texts]
        with metrics.CLASSIFY_SECONDS.time():  # after an explanation, its rows have run: no pass left
            classifications = through_cache(self._classifications, keys, classify, "classifications")
        return [
            Prediction(classification=c, explanation=e)
            for c, e in zip(classifications, explanations, strict=True)
        ]

    def classify(
        self, texts: Sequence[Input], ticket: Ticket | None = None, long_text: LongText = "truncate"
    ) -> list[Classification]:
        return [p.classification for p in self.predict(texts, long_text, None, ticket)]

    def explain(
        self, texts: Sequence[Input], options: ExplainOptions, ticket: Ticket | None = None
    ) -> list[Explanation]:
        explanations = [p.explanation for p in self.predict(texts, options.long_text, options, ticket)]
        return [e for e in explanations if e is not None]

    def results(
        self, texts: Sequence[Input], parameters: InvocationParameters, ticket: Ticket | None = None
    ) -> list[dict[str, Any]]:
        """Each text's result as /invocations answers it (the JSON body), MAX_TEXTS_PER_REQUEST
        texts to a pass, so that a batch of records is never refused for its size alone: what every
        protocol answers (SageMaker's bodies and records, KServe V1 and V2), and what the records of
        `clarion explain` and of an analysis hold. The texts are taken as the request takes them
        (with candidate_labels, zero-shot texts)."""
        # Options are checked whether or not the request explains: a label the model does not have
        # (nor the candidates, zero-shot), what a text pair cannot take, an amortized artifact that
        # is not loaded are the client's mistakes either way, as the OpenAPI document says.
        texts = parameters.inputs(list(texts))
        self.check_options(parameters.explain_options(), texts)
        options = parameters.explain_options() if parameters.explain else None
        model_id = self.model.model_id
        return [
            body(text_response(p.classification, p.explanation, model_id))
            for p in self.predict_in_passes(texts, parameters.long_text, options, ticket)
        ]

    def predict_in_passes(
        self,
        texts: Sequence[Input],
        long_text: LongText,
        options: ExplainOptions | None,
        ticket: Ticket | None = None,
    ) -> list[Prediction]:
        """predict, MAX_TEXTS_PER_REQUEST texts to a pass: a batch of records (a Batch Transform
        body, Clarify's records) is never refused for its size alone."""
        size = self.settings.max_texts
        return [
            prediction
            for start in range(0, len(texts), size)
            for prediction in self.predict(texts[start : start + size], long_text, options, ticket)
        ]

    def stop(self) -> None:
        if self._engine is not None:
            self._engine.stop()


def _remote_health(model: RemoteModel) -> Health:
    """A remote model is healthy while its predictor says it is ready; /ping says which and why."""
    predictor = model.predictor_status()
    return Health(
        status="healthy" if predictor.ready else "loading",
        api_version=API_VERSION,
        model=model.model_id,
        labels=model.labels,
        exact_backend="remote",
        fast_backend="remote",
        predictor=predictor.report(),
        error=None if predictor.ready else f"predictor {predictor.url} is not ready: {predictor.error}",
    )


def _finished(explanation: Explanation) -> bool:
    """Worth caching: not stopped by its time budget (another request, even the same one, may get
    further)."""
    return explanation.complete is not False


def _explanation_cache(settings: Settings) -> ExplanationCache:
    if settings.explanation_cache_size == 0:
        return NoCache()
    if settings.jobs_are_async and settings.redis_store_url:
        from shared.storage.redis import redis_client

        return RedisCache(redis_client(settings.redis_store_url), settings.job_result_ttl_s)
    return MemoryCache(settings.explanation_cache_size)
