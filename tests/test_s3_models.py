"""Models from S3: a real S3-compatible server on loopback (moto), a model.tar.gz uploaded with boto3."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.errors import UnsafeArchive
from shared.runtime.source import resolve_model
from shared.settings import Settings
from tests.support import aws_env, run_cli, running_service, s3_client, s3_server, wait_healthy

BUCKET = "clarion-models"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server(BUCKET) as endpoint:
        yield endpoint


def _upload_model(endpoint: str, key: str, model_dir: Path, folder: str | None) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir, arcname=folder or ".")
    s3_client(endpoint).put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())


@pytest.mark.parametrize("folder", [None, "my-model"], ids=["files-at-root", "one-top-folder"])
def test_service_loads_and_serves_a_model_from_s3(
    s3_endpoint: str, tiny_model_dir: Path, tmp_path: Path, folder
) -> None:
    key = f"{folder or 'root'}/model.tar.gz"
    _upload_model(s3_endpoint, key, tiny_model_dir, folder)
    env = {"BUCKET_NAME": BUCKET, "MODEL_PATH": key, "SERVERLESS": "true", **aws_env(s3_endpoint)}
    with running_service(tmp_path, env) as svc:
        wait_healthy(svc)
        body = svc.post("/invocations", json={"data": "good film", "explain": True, "max_evals": 20}).json()
        assert body["model"] == f"s3://{BUCKET}/{key}"
        assert len(body["prediction"]) == 3 and body["explanation"]


def test_model_path_may_be_a_prefix(
    s3_endpoint: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    _upload_model(s3_endpoint, "prefixed/v1/model.tar.gz", tiny_model_dir, None)
    for name, value in aws_env(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    settings = Settings(bucket_name=BUCKET, model_path="prefixed/v1/", model_cache_dir=str(tmp_path))
    location = resolve_model(settings)
    assert location.source == "s3" and (Path(location.model_ref) / "config.json").is_file()


def _malicious_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("config.json", "../../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    return buffer.getvalue()


def test_malicious_archive_from_s3_is_refused(s3_endpoint: str, tmp_path: Path, monkeypatch) -> None:
    s3_client(s3_endpoint).put_object(Bucket=BUCKET, Key="evil/model.tar.gz", Body=_malicious_tar())
    for name, value in aws_env(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    cache = tmp_path / "cache"
    with pytest.raises(UnsafeArchive, match="escapes"):
        resolve_model(
            Settings(bucket_name=BUCKET, model_path="evil/model.tar.gz", model_cache_dir=str(cache))
        )
    assert not list(tmp_path.rglob("escaped.txt"))
    # and the CLI stops with one line instead of serving
    result = run_cli(
        "serve",
        BUCKET_NAME=BUCKET,
        MODEL_PATH="evil/model.tar.gz",
        MODEL_CACHE_DIR=str(cache),
        **aws_env(s3_endpoint),
    )
    assert result.returncode == 2
    assert "refused" in result.stderr.strip().splitlines()[-1]


def test_missing_object_is_a_clear_error(s3_endpoint: str, tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        BUCKET_NAME=BUCKET,
        MODEL_PATH="nothing/here.tar.gz",
        MODEL_CACHE_DIR=str(tmp_path),
        **aws_env(s3_endpoint),
    )
    assert result.returncode == 2
    assert "could not download s3://clarion-models/nothing/here.tar.gz" in result.stderr
