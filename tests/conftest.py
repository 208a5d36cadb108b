"""Shared fixtures: tiny random-weight models built offline, the team kit's real models, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import TEAM_KIT, RedisServer, build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with random weights, 3 labels, and a WordPiece tokenizer made offline."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), labels=["negative", "neutral", "positive"])


@pytest.fixture(scope="session")
def tiny_nli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT with two token types (BertConfig's default) and NLI's three labels: text pairs
    and zero-shot labels."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-nli"), labels=["contradiction", "neutral", "entailment"], seed=3
    )


@pytest.fixture(scope="session")
def tiny_multilabel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-multilabel"),
        labels=["toxic", "insult", "threat"],
        problem_type="multi_label_classification",
    )


def _team_model(name: str) -> Path:
    path = TEAM_KIT / "models" / name
    if not (path / "config.json").is_file():
        pytest.skip(f"team kit model {name} not found beside the repo")
    return path


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    return _team_model("minilm-sst2")


@pytest.fixture(scope="session")
def emotion_dir() -> Path:
    return _team_model("minilm-emotion")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server on loopback for one test module (its own data directory)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(autouse=True)
def _fresh_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's in-process S3 calls resolve credentials from its own environment: boto3's default
    session keeps the first keys it resolved for the life of the process, so an earlier file's test
    keys (tests/test_s3_models.py's) were sent by tests/test_s3_scope.py's in-process calls, which
    moto, enforcing IAM there, refused (InvalidAccessKeyId) whenever the two shared a test process."""
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
