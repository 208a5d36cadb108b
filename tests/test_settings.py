"""Settings: read once, typed, validated, with one clear line naming the bad variable."""

from __future__ import annotations

import pytest

from shared.errors import ConfigurationError
from shared.settings import Settings
from tests.support import run_cli


@pytest.mark.parametrize("raw", ["true", "TRUE", "True", "1", "yes", "YES", "on"])
def test_true_values(raw: str) -> None:
    assert Settings.from_env({"SERVERLESS": raw}).serverless is True


@pytest.mark.parametrize("raw", ["false", "False", "FALSE", "0", "no", "No", "off", ""])
def test_false_values_are_false(raw: str) -> None:
    # The seed's bool(os.getenv("LOCAL")) made "False" true; it must not come back.
    assert Settings.from_env({"SERVERLESS": raw}).serverless is False


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SERVERLESS": "maybe"}, "SERVERLESS"),
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "SAGEMAKER_MODEL_SERVER_WORKERS"),
        ({"SAGEMAKER_MODEL_SERVER_TIMEOUT": "-1"}, "SAGEMAKER_MODEL_SERVER_TIMEOUT"),
        ({"MAX_REQUEST_BYTES": "lots"}, "MAX_REQUEST_BYTES"),
        ({"DEVICE": "tpu"}, "DEVICE"),
        ({"BUCKET_NAME": "models"}, "MODEL_PATH"),
        ({"MODEL_PATH": "a/model.tar.gz"}, "BUCKET_NAME"),
        ({"MODEL_DIR": "/definitely/not/here"}, "MODEL_DIR"),
        ({"JOB_SOFT_TIME_LIMIT": "100", "JOB_TIME_LIMIT": "50"}, "JOB_TIME_LIMIT"),
        ({"MODEL_URL": "http://host/models/m"}, "MODEL_URL"),
        ({"MODEL_URL": "ftp://host/v2/models/m"}, "MODEL_URL"),
        ({"MODEL_URL": "sagemaker://"}, "MODEL_URL"),
        ({"MODEL_URL": "http://host/v2/models/m", "HUB_MODEL_NAME": "x"}, "HUB_MODEL_NAME"),
        ({"LABELS": '["a", 1]'}, "LABELS"),
        ({"LABELS": "a,b,a"}, "LABELS"),
        ({"REMOTE_BATCH_SIZE": "0"}, "REMOTE_BATCH_SIZE"),
        ({"REMOTE_SCORES_PATH": "[[["}, "REMOTE_SCORES_PATH"),
        ({"REMOTE_CONTENT_TYPE": "application/xml"}, "REMOTE_CONTENT_TYPE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    assert variable in str(info.value)
    assert "\n" not in str(info.value)


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.port == 8080
    assert settings.timeout_s == 60
    assert settings.max_request_bytes == 6 * 1024 * 1024
    assert settings.serverless is False
    assert settings.trust_remote_code is False


def test_worker_and_thread_counts_never_oversubscribe() -> None:
    serverless = Settings.from_env({"SERVERLESS": "true"})
    assert serverless.http_processes == 1
    assert serverless.threads_per_http_process == serverless.cpu_count
    many = Settings(cpu_count=8)
    assert many.http_processes == 8 and many.threads_per_http_process == 1
    override = Settings(cpu_count=8, workers=2)
    assert override.http_processes == 2 and override.threads_per_http_process == 4
    for workers in range(1, 12):
        s = Settings(cpu_count=8, workers=workers)
        assert s.http_processes * s.threads_per_http_process <= max(8, s.http_processes)


def test_jobs_run_inline_without_a_broker_or_when_serverless() -> None:
    assert Settings.from_env({}).jobs_are_async is False
    assert Settings.from_env({"REDIS_URL": "redis://x:6379/0"}).jobs_are_async is True
    assert Settings.from_env({"REDIS_URL": "redis://x:6379/0", "SERVERLESS": "true"}).jobs_are_async is False


def test_local_requires_a_model_directory(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="LOCAL"):
        Settings.from_env({"LOCAL": "true"})
    assert Settings.from_env({"LOCAL": "true", "MODEL_DIR": str(tmp_path)}).local is True


def test_cli_stops_with_one_line_on_a_bad_setting() -> None:
    result = run_cli("serve", SERVERLESS="sometimes")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SERVERLESS" in lines[0] and "boolean" in lines[0]


def test_stored_jobs_need_a_redis() -> None:
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        Settings.from_env({"CELERY_BROKER_URL": "amqp://guest@rabbit//"})
    settings = Settings.from_env(
        {"CELERY_BROKER_URL": "amqp://guest@rabbit//", "REDIS_URL": "redis://r:6379/1"}
    )
    assert settings.redis_store_url == "redis://r:6379/1"
    assert Settings.from_env({"CELERY_BROKER_URL": "redis://b:6379/0"}).redis_store_url == "redis://b:6379/0"


def test_celery_pool_threads_follow_the_pool_not_the_api() -> None:
    # The API's worker count must not size the Celery pool's threads (2 x 2 on 2 cores collapsed).
    settings = Settings(cpu_count=2, workers=1, worker_concurrency=2)
    assert settings.threads_per_http_process == 2
    assert settings.celery_concurrency * settings.celery_threads_per_process <= 2


def test_a_threads_pool_is_one_process_with_every_core_and_several_jobs() -> None:
    settings = Settings.from_env({"WORKER_POOL": "threads"})
    assert settings.worker_pool == "threads" and settings.celery_concurrency == 4
    threads = Settings(cpu_count=2, worker_pool="threads", worker_concurrency=6)
    assert threads.celery_concurrency == 6 and threads.celery_threads_per_process == 2
    with pytest.raises(ConfigurationError, match="WORKER_POOL"):
        Settings.from_env({"WORKER_POOL": "gevent"})


def test_engine_and_batch_size_settings() -> None:
    settings = Settings.from_env({"PASS_ROWS": "16", "PASS_TOKENS": "512", "EXPLAIN_BATCH_SIZE": "8"})
    assert (settings.pass_rows, settings.pass_tokens, settings.explain_batch_size) == (16, 512, 8)
    assert Settings().explain_batch_size == 5  # SHAP's default for text
    with pytest.raises(ConfigurationError, match="EXPLAIN_BATCH_SIZE"):
        Settings.from_env({"EXPLAIN_BATCH_SIZE": "600"})  # over EXPLAIN_BATCH_SIZE_LIMIT (512)
    with pytest.raises(ConfigurationError, match="PASS_TOKENS"):
        Settings.from_env({"PASS_TOKENS": "0"})


def test_a_service_runs_the_threads_its_role_was_given(tiny_model_dir) -> None:
    import torch

    from shared.serving.service import ClarionService

    before = torch.get_num_threads()
    try:
        ClarionService(Settings(model_dir=str(tiny_model_dir), cpu_count=2, workers=1), threads=1).load()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_default_max_evals_respects_a_lower_limit() -> None:
    """A request that leaves max_evals out must not be accepted with a default over the limit
    (with a broker, the worker would then fail the job the API accepted)."""
    from shared.io.schemas import SeedBody, parse_model

    assert parse_model(SeedBody, {"data": "x"}, Settings(max_evals_limit=40)).max_evals == 40
    assert parse_model(SeedBody, {"data": "x"}, Settings()).max_evals == 500


def test_a_remote_model_url_and_its_labels() -> None:
    settings = Settings.from_env(
        {"MODEL_URL": "https://kserve.example/v2/models/sst2/", "LABELS": '["no, never", "yes"]'}
    )
    assert settings.model_url == "https://kserve.example/v2/models/sst2"
    assert settings.labels == ("no, never", "yes")
    assert (
        Settings.from_env({"MODEL_URL": "sagemaker://my-endpoint-1"}).model_url == "sagemaker://my-endpoint-1"
    )
    assert Settings.from_env({"LABELS": "neg, pos"}).labels == ("neg", "pos")
