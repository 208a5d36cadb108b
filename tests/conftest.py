"""Shared fixtures: tiny random-weight models built offline, the team kit's real models, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import TEAM_KIT, RedisServer, build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The files that take longest (each test starts real services, workers or images), slowest first,
# from a suite run's --durations; scripts/dev.sh hands files to its two test processes in this order
# (--no-loadscope-reorder). Left to the order xdist gives by default, the most tests first, these
# few-test files came last, and one process finished a tail of minutes alone while the other idled.
SLOWEST_FILES = (
    "test_bench_smoke_services.py",
    "test_fuzzing.py",
    "test_bench_smoke.py",
    "test_batch_cli.py",
    "test_durability.py",
    "test_worker_leases.py",
    "test_client_package.py",
    "test_compose.py",
    "test_analysis.py",
    "test_amortized.py",
    "test_manifests.py",
    "test_zero_shot.py",
    "test_images.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first, whole and in SLOWEST_FILES's order; every other file after them, in
    collection order (a stable sort: a file's tests keep theirs)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOWEST_FILES)))


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
