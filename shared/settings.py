"""Clarion's settings: read once from the environment into one frozen, validated object."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from shared.errors import ConfigurationError

T = TypeVar("T")

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
DEFAULT_HUB_MODEL = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off", ""}


def parse_bool(name: str, raw: str) -> bool:
    """Parse a boolean the way operators write them; "False" must never mean true."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigurationError(f"{name}={raw!r}: expected a boolean (true/false, 1/0, yes/no)")


def _int_parser(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r}: expected an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise ConfigurationError(f"{name}={raw!r}: expected an integer >= {minimum}{upper}")
        return value

    return parse


def _float_parser(minimum: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r}: expected a number") from None
        if value < minimum:
            raise ConfigurationError(f"{name}={raw!r}: expected a number >= {minimum}")
        return value

    return parse


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _text(name: str, raw: str) -> str | None:
    return raw.strip() or None


_SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _served_name(name: str, raw: str) -> str | None:
    """A model name that can stand in a URL path segment (KServe's /v2/models/<name>/infer)."""
    value = raw.strip()
    if value and not _SERVED_NAME.fullmatch(value):
        raise ConfigurationError(
            f"{name}={raw!r}: expected letters, digits, '.', '_' or '-' (it names the model in URLs)"
        )
    return value or None


def _device(name: str, raw: str) -> str:
    value = raw.strip().lower() or "auto"
    if value in {"auto", "cpu", "cuda", "mps"} or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ConfigurationError(f"{name}={raw!r}: expected auto, cpu, cuda, cuda:N or mps")


def _log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        return value
    raise ConfigurationError(f"{name}={raw!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")


def _keys(name: str, raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if any(len(k) < 16 for k in keys):
        raise ConfigurationError(f"{name}: every key must be at least 16 characters long")
    return keys


def _names(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# An S3 location analyses may use: s3://bucket, optionally a prefix of plain segments (no '.', '..',
# '//', '%', '\\' or control characters: the rules shared/storage/s3.py applies to every request).
_S3_PREFIX = re.compile(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/([^/%\\\x00-\x1f\x7f-\x9f]+/)*)?")


def _s3_prefixes(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated s3://bucket/prefix/ locations, each normalised to end in '/': `s3://b/data`
    is the folder `s3://b/data/`, so `s3://b/database/x` is not inside it."""
    prefixes = []
    for entry in _names(name, raw):
        folder = entry if entry.endswith("/") else entry + "/"
        segments = folder[len("s3://") :].split("/")[1:-1]
        try:  # S3 keys are at most 1,024 bytes of UTF-8: a prefix past that could match nothing
            key_bytes = len("/".join(segments).encode("utf-8"))
        except UnicodeEncodeError:
            key_bytes = 1025
        if not _S3_PREFIX.fullmatch(folder) or any(s in (".", "..") for s in segments) or key_bytes > 1000:
            raise ConfigurationError(
                f"{name}: {entry!r} is not s3://bucket/prefix/ (a valid bucket name, then plain "
                "segments: no '.', '..', '//', '%', '\\' or control characters)"
            )
        prefixes.append(folder)
    return tuple(prefixes)


def _strategy(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("MULTI_RECORD", "SINGLE_RECORD"):
        raise ConfigurationError(f"{name}={raw!r}: expected MULTI_RECORD or SINGLE_RECORD")
    return value


# A model Clarion does not host (shared/runtime/remote.py): a KServe V1 or V2 model URL, or a
# SageMaker endpoint.
_REMOTE_URL = re.compile(
    r"(https?://[^/\s?#]+(?:/[^\s?#]*)?/v[12]/models/[^/\s?#]+|sagemaker://[A-Za-z0-9](-*[A-Za-z0-9]){0,62})"
)


def _model_url(name: str, raw: str) -> str | None:
    value = raw.strip().rstrip("/")
    if value and not _REMOTE_URL.fullmatch(value):
        raise ConfigurationError(
            f"{name}={raw!r}: expected http(s)://host/v2/models/<name> (Open Inference Protocol), "
            "http(s)://host/v1/models/<name> (KServe V1) or sagemaker://<endpoint-name>"
        )
    return value or None


def _labels(name: str, raw: str) -> tuple[str, ...]:
    """A JSON array of label names (any name), or names separated by commas."""
    value = raw.strip()
    if value.startswith("["):
        import json

        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(x, str) and x for x in parsed):
            raise ConfigurationError(f"{name}={raw!r}: expected a JSON array of label names")
        labels = tuple(parsed)
    else:
        labels = _names(name, raw)
    if len(set(labels)) != len(labels):
        raise ConfigurationError(f"{name}={raw!r}: label names must be distinct")
    return labels


def _jmespath(name: str, raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return None
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        jmespath.compile(value)
    except JMESPathError as exc:
        raise ConfigurationError(
            f"{name}={raw!r}: not a JMESPath expression ({str(exc).splitlines()[0]})"
        ) from None
    return value


def _one_of(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value in choices:
            return value
        raise ConfigurationError(f"{name}={raw!r}: expected {', '.join(choices[:-1])} or {choices[-1]}")

    return parse


def _env(name: str, parse: Callable[[str, str], Any], default: Any = None) -> Any:
    """Declare a field read from environment variable `name` with `parse`, or `default` when unset."""
    return field(default=default, metadata={"env": name, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """Everything Clarion reads from its environment. Build it with `Settings.from_env()`."""

    # Where the model comes from (see shared/runtime/source.py for the precedence).
    model_dir: str | None = _env("MODEL_DIR", _text)
    bucket_name: str | None = _env("BUCKET_NAME", _text)
    model_path: str | None = _env("MODEL_PATH", _text)
    hub_model_name: str | None = _env("HUB_MODEL_NAME", _text)
    tokenizer: str | None = _env("TOKENIZER", _text)
    # What responses, stored jobs and KServe's paths call the model (default: its folder's name, its
    # S3 location or its hub id). An InferenceService sets it to its own name.
    model_name: str | None = _env("MODEL_NAME", _served_name)
    local: bool = _env("LOCAL", parse_bool, False)
    # A model Clarion does not host (instead of the above): its passes are calls to the predictor,
    # explanations mask text (docs/remote.md). TOKENIZER, when set, makes its units.
    model_url: str | None = _env("MODEL_URL", _model_url)
    labels: tuple[str, ...] = _env("LABELS", _labels, ())  # the predictor's score columns, in order
    remote_batch_size: int = _env("REMOTE_BATCH_SIZE", _int_parser(1, 4096), 32)  # texts per call
    remote_concurrency: int = _env("REMOTE_CONCURRENCY", _int_parser(1, 64), 4)  # calls in flight
    remote_timeout_s: float = _env("REMOTE_TIMEOUT", _float_parser(0.1), 30.0)  # per call
    remote_retries: int = _env("REMOTE_RETRIES", _int_parser(0, 10), 2)  # connection errors only
    remote_output: str | None = _env("REMOTE_OUTPUT", _text)  # V2: the FP32 output (default: the first)
    # SageMaker endpoints: where the scores and the label names are in its answer (Clarify's
    # `probability` and `label_headers`), and the content type it is sent.
    remote_scores_path: str | None = _env("REMOTE_SCORES_PATH", _jmespath)
    remote_labels_path: str | None = _env("REMOTE_LABELS_PATH", _jmespath)
    remote_content_type: str = _env(
        "REMOTE_CONTENT_TYPE",
        _one_of("application/json", "application/jsonlines", "text/csv"),
        "application/json",
    )
    trust_remote_code: bool = _env("TRUST_REMOTE_CODE", parse_bool, False)
    model_cache_dir: str = _env("MODEL_CACHE_DIR", _text, "/tmp/clarion-models")
    device: str = _env("DEVICE", _device, "auto")
    # How exact passes run: auto is onnxruntime on CPU (when the model exports), torch on GPU.
    exact_backend: str = _env("EXACT_BACKEND", _one_of("auto", "torch", "onnxruntime"), "auto")
    # onnxruntime's transformer optimizer on the exact graph (shared/runtime/fusion.py): auto runs the
    # fused graph where it is faster with the same logits, on whenever it has the same logits.
    onnx_fusion: str = _env("ONNX_FUSION", _one_of("auto", "on", "off"), "auto")

    # Serving.
    serverless: bool = _env("SERVERLESS", parse_bool, False)
    host: str = _env("HOST", _text, "0.0.0.0")
    port: int = _env("PORT", _int_parser(1, 65535), 8080)
    http_threads: int = _env("HTTP_THREADS", _int_parser(1, 1024), 16)
    access_log: bool = _env("ACCESS_LOG", parse_bool, True)
    workers: int | None = _env("SAGEMAKER_MODEL_SERVER_WORKERS", _int_parser(1, 256))
    timeout_s: int = _env("SAGEMAKER_MODEL_SERVER_TIMEOUT", _int_parser(1), 60)
    torch_threads: int | None = _env("TORCH_THREADS", _int_parser(1, 256))
    log_level: str = _env("LOG_LEVEL", _log_level, "INFO")
    # Optional bearer keys (comma-separated). Unset: no authentication (SageMaker: IAM guards it).
    api_keys: tuple[str, ...] = _env("API_KEYS", _keys, ())

    # Request limits.
    max_request_bytes: int = _env("MAX_REQUEST_BYTES", _int_parser(1), 6 * 1024 * 1024)
    max_texts: int = _env("MAX_TEXTS_PER_REQUEST", _int_parser(1), 64)
    max_text_chars: int = _env("MAX_TEXT_CHARS", _int_parser(1), 20_000)
    # Documents explained through windows (long_text "windows"), meant to go as jobs.
    max_windowed_text_chars: int = _env("MAX_WINDOWED_TEXT_CHARS", _int_parser(1), 200_000)
    # Tokens per window (boundary tokens included), at most the model's maximum length. Smaller
    # windows give each window's prediction less context and make explanations of long documents
    # far cheaper: a mask re-runs only the windows holding what it masks. A 2,000-word review at
    # sentence granularity, max_evals 500, as a job on 2 CPU cores: 21 s with 256-token windows,
    # 64 s with 512 (216 against 333 window rows run, each about 2.5x cheaper).
    window_tokens: int = _env("WINDOW_TOKENS", _int_parser(8), 256)
    max_evals_limit: int = _env("MAX_EVALS_LIMIT", _int_parser(4), 5_000)
    # precision "fast": "auto" measures the candidates at start and runs the fastest that keeps
    # exact's ranking (shared/serving/fast.py); a name forces that one ("exact": exact's own path).
    fast_backend: str = _env(
        "FAST_BACKEND", _one_of("auto", "exact", "torch-half", "onnxruntime-int8"), "auto"
    )
    # false: the int8 graph is not made, so it is no candidate.
    fast_int8: bool = _env("FAST_INT8", parse_bool, True)
    # precision "amortized": the folder `clarion distill` wrote for this model, and the held-out
    # Spearman below which an artifact is refused at load.
    amortized_explainer: str | None = _env("AMORTIZED_EXPLAINER", _text)
    amortized_min_spearman: float = _env("AMORTIZED_MIN_SPEARMAN", _float_parser(-1.0), 0.7)

    # Dataset analyses (POST /analyses): what one may hold, and the texts each worker task explains.
    analysis_max_texts: int = _env("ANALYSIS_MAX_TEXTS", _int_parser(1), 100_000)
    analysis_max_bytes: int = _env("ANALYSIS_MAX_BYTES", _int_parser(1), 64 * 1024 * 1024)
    analysis_chunk_texts: int = _env("ANALYSIS_CHUNK_TEXTS", _int_parser(1, 10_000), 32)
    # Analyses queued or running at once, across the deployment; one more is a 429 (Redis holds each
    # one's chunks until it is merged).
    analysis_max_running: int = _env("ANALYSIS_MAX_RUNNING", _int_parser(1), 8)
    # The only S3 locations analyses may read and write (comma-separated s3://bucket/prefix/);
    # none: every s3:// location is refused (a 403).
    s3_allowed_prefixes: tuple[str, ...] = _env("S3_ALLOWED_PREFIXES", _s3_prefixes, ())

    # The Prometheus port of `clarion worker` (the API serves GET /metrics); 0: none.
    metrics_port: int = _env("METRICS_PORT", _int_parser(0, 65535), 9101)

    # SageMaker Batch Transform (it sets these; GET /execution-parameters reports them).
    sagemaker_batch: bool = _env("SAGEMAKER_BATCH", parse_bool, False)
    max_payload_mb: int = _env("SAGEMAKER_MAX_PAYLOAD_IN_MB", _int_parser(1, 100), 6)
    batch_strategy: str = _env("SAGEMAKER_BATCH_STRATEGY", _strategy, "MULTI_RECORD")
    max_concurrent_transforms: int | None = _env("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", _int_parser(1, 256))

    # SageMaker Clarify's online explainability format (api/clarify.py): the endpoint's
    # ClarifyExplainerConfig becomes these settings.
    clarify_mode: bool = _env("CLARIFY_MODE", parse_bool, False)  # every JSON answer in Clarify's shape
    clarify_enable_explanations: str = _env("CLARIFY_ENABLE_EXPLANATIONS", _text, "`true`")
    clarify_num_samples: int | None = _env("CLARIFY_NUM_SAMPLES", _int_parser(4))  # max_evals
    clarify_use_logit: bool = _env("CLARIFY_USE_LOGIT", parse_bool, False)
    clarify_seed: int = _env("CLARIFY_SEED", _int_parser(0, 2**32 - 1), 0)
    clarify_label_headers: tuple[str, ...] = _env("CLARIFY_LABEL_HEADERS", _names, ())
    clarify_granularity: str = _env("CLARIFY_GRANULARITY", _one_of("token", "sentence", "paragraph"), "token")

    # Model execution: the engine's pass size, and SHAP's batch size (which is part of the answer).
    pass_rows: int | None = _env("PASS_ROWS", _int_parser(1, 65536))
    pass_tokens: int | None = _env("PASS_TOKENS", _int_parser(1))
    pass_spare_tokens: int | None = _env("PASS_SPARE_TOKENS", _int_parser(0))
    explain_batch_size: int = _env("EXPLAIN_BATCH_SIZE", _int_parser(1, 4096), 5)
    explain_batch_size_limit: int = _env("EXPLAIN_BATCH_SIZE_LIMIT", _int_parser(1, 4096), 512)
    micro_batching: bool = _env("MICRO_BATCHING", parse_bool, True)
    explanation_cache_size: int = _env("EXPLANATION_CACHE_SIZE", _int_parser(0), 1024)

    # Jobs (Celery + Redis).
    redis_url: str | None = _env("REDIS_URL", _text)
    celery_broker_url: str | None = _env("CELERY_BROKER_URL", _text)
    celery_result_backend: str | None = _env("CELERY_RESULT_BACKEND", _text)
    job_soft_time_limit_s: int = _env("JOB_SOFT_TIME_LIMIT", _int_parser(1), 600)
    job_time_limit_s: int = _env("JOB_TIME_LIMIT", _int_parser(1), 660)
    job_result_ttl_s: int = _env("JOB_RESULT_TTL", _int_parser(60), 24 * 3600)
    job_visibility_timeout_s: int | None = _env("JOB_VISIBILITY_TIMEOUT", _int_parser(1))
    worker_concurrency: int | None = _env("WORKER_CONCURRENCY", _int_parser(1, 256))
    worker_pool: str = _env("WORKER_POOL", _one_of("prefork", "threads"), "prefork")
    # A running task's lease: its worker renews it every third of this; once it lapses (the whole
    # worker died) the API's sweeper publishes the task again (shared/jobs/lease.py).
    job_lease_s: int = _env("JOB_LEASE", _int_parser(3), 30)
    # A job whose worker was lost this many times (each start counts) fails instead of running again:
    # a text that kills its worker (out of memory) must not take down every worker in turn.
    job_max_attempts: int = _env("JOB_MAX_ATTEMPTS", _int_parser(1), 3)
    # A job recorded this long ago and still not published lost its publisher: the API sweeps it.
    job_publish_grace_s: float = _env("JOB_PUBLISH_GRACE", _float_parser(0.1), 30.0)
    # Where inline jobs (no broker) are stored so every gunicorn worker finds them;
    # `clarion serve` makes a fresh folder per server when this is unset.
    inline_jobs_dir: str | None = _env("INLINE_JOBS_DIR", _text)

    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise ConfigurationError naming the first bad variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata.get("env")
            if name is not None and name in environ:
                values[f.name] = f.metadata["parse"](name, environ[name])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the rules that tie several variables together."""
        if bool(self.bucket_name) != bool(self.model_path):
            missing = "MODEL_PATH" if self.bucket_name else "BUCKET_NAME"
            raise ConfigurationError(
                f"{missing}: required when loading from S3 (set both BUCKET_NAME and MODEL_PATH)"
            )
        if self.model_dir is not None and not Path(self.model_dir).is_dir():
            raise ConfigurationError(f"MODEL_DIR={self.model_dir!r}: expected an existing directory")
        if self.model_url is not None:
            hosted = {
                "MODEL_DIR": self.model_dir,
                "BUCKET_NAME": self.bucket_name,
                "HUB_MODEL_NAME": self.hub_model_name,
                "AMORTIZED_EXPLAINER": self.amortized_explainer,
                "LOCAL": self.local,
            }
            clash = [name for name, value in hosted.items() if value]
            if clash:
                raise ConfigurationError(
                    f"MODEL_URL: a remote model is served alone; unset {', '.join(clash)}"
                )
        if self.local and self.local_model_dir is None:
            raise ConfigurationError(
                f"LOCAL=true: expected a model directory (MODEL_DIR, or a model in {SAGEMAKER_MODEL_DIR})"
            )
        if self.jobs_are_async and self.redis_store_url is None:
            raise ConfigurationError(
                "REDIS_URL: required with a non-Redis CELERY_BROKER_URL (jobs are stored in Redis)"
            )
        if self.explain_batch_size > self.explain_batch_size_limit:
            raise ConfigurationError(
                f"EXPLAIN_BATCH_SIZE={self.explain_batch_size}: expected at most EXPLAIN_BATCH_SIZE_LIMIT "
                f"({self.explain_batch_size_limit})"
            )
        if self.job_time_limit_s <= self.job_soft_time_limit_s:
            raise ConfigurationError(
                f"JOB_TIME_LIMIT={self.job_time_limit_s}: expected more than JOB_SOFT_TIME_LIMIT "
                f"({self.job_soft_time_limit_s}) so a job can clean up before it is killed"
            )

    # Derived values: computed from the fields, never stored twice.

    @property
    def local_model_dir(self) -> Path | None:
        """The local model directory: MODEL_DIR, else /opt/ml/model when SageMaker put a model there."""
        if self.model_dir is not None:
            return Path(self.model_dir)
        if (SAGEMAKER_MODEL_DIR / "config.json").is_file() or any(SAGEMAKER_MODEL_DIR.glob("*.tar.gz")):
            return SAGEMAKER_MODEL_DIR
        return None

    @property
    def time_budget_limit_s(self) -> int:
        """The largest time_budget a request may ask for: the longest a unit of work may run (the
        request timeout; jobs and analysis chunks: their soft time limit)."""
        return max(self.timeout_s, self.job_soft_time_limit_s if self.broker_url else 0)

    @property
    def broker_url(self) -> str | None:
        """The Celery broker, or None when jobs run inline (SERVERLESS or nothing configured)."""
        if self.serverless:
            return None
        return self.celery_broker_url or self.redis_url

    @property
    def result_backend_url(self) -> str | None:
        if self.broker_url is None:
            return None
        return self.celery_result_backend or self.redis_url or self.celery_broker_url

    @property
    def jobs_are_async(self) -> bool:
        return self.broker_url is not None

    @property
    def redis_broker_url(self) -> str | None:
        """The broker when it is Redis: its queue is a list that workers, KEDA and /metrics read."""
        url = self.broker_url
        return url if url and url.startswith(REDIS_SCHEMES) else None

    @property
    def redis_store_url(self) -> str | None:
        """The Redis that keeps stored jobs and cached explanations (REDIS_URL, else a Redis broker
        or result backend)."""
        for url in (self.redis_url, self.celery_result_backend, self.celery_broker_url):
            if url and url.startswith(REDIS_SCHEMES):
                return url
        return None

    @property
    def visibility_timeout_s(self) -> int:
        """Seconds before Redis hands an unacknowledged job (its worker died) to another worker.

        It must outlast the longest job, or a slow job would run twice: the hard limit plus a margin.
        """
        return self.job_visibility_timeout_s or self.job_time_limit_s + 60

    @property
    def request_bytes_limit(self) -> int:
        """Under Batch Transform a request may be as large as its payload limit (MaxPayloadInMB)."""
        if self.sagemaker_batch:
            return max(self.max_request_bytes, self.max_payload_mb * 1024 * 1024)
        return self.max_request_bytes

    @property
    def concurrent_transforms(self) -> int:
        """Requests Batch Transform may send at once: one per gunicorn worker by default, since each
        worker's engine runs one pass at a time and more requests only queue behind it."""
        return self.max_concurrent_transforms or self.http_processes

    @property
    def http_processes(self) -> int:
        """HTTP processes (gunicorn's workers): 1 in single-process mode, else one per core, unless
        overridden."""
        if self.workers is not None:
            return self.workers
        return 1 if self.serverless else self.cpu_count

    @property
    def threads_per_http_process(self) -> int:
        """torch threads per process so that processes x threads never exceeds the cores.

        Oversubscribing cores collapses throughput (measured 550 -> 23 requests/s on 2 cores).
        """
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, self.cpu_count // self.http_processes)

    @property
    def celery_concurrency(self) -> int:
        """Jobs a `clarion worker` runs at once: with prefork, one per pool process (one process per
        core unless overridden); with threads, all in one process, sharing its engine (4 unless
        overridden)."""
        if self.worker_concurrency:
            return self.worker_concurrency
        return self.cpu_count if self.worker_pool == "prefork" else 4

    @property
    def celery_threads_per_process(self) -> int:
        """torch threads of each process that loads the model (processes x threads <= cores)."""
        if self.torch_threads:
            return self.torch_threads
        processes = self.celery_concurrency if self.worker_pool == "prefork" else 1
        return max(1, self.cpu_count // processes)


def load_settings() -> Settings:
    """Settings from the process environment (the one place the environment is read)."""
    return Settings.from_env()
