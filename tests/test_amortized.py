"""The amortized explainer: `clarion distill` on the tiny model, then serving it (additivity, the
validation figures, word granularity, jobs), and refusing a foreign, weak or missing artifact."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from shared.errors import InvalidRequest
from shared.explanation.distillation import ENCODER_LEARNING_RATE
from shared.io.schemas import ExplainOptions
from shared.serving.service import ClarionService
from shared.settings import Settings
from tests.support import (
    REPO,
    WORDS,
    Service,
    assert_close_to_scale,
    base_env,
    build_tiny_model,
    job_stack,
    running_service,
    wait_healthy,
)


def word_salads(count: int, seed: int) -> list[str]:
    """`count` seeded texts of 4 to 12 words the tiny tokenizer knows."""
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha() and len(w) > 1]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(count)]


TRAIN = word_salads(100, seed=0)  # 90 to train on, 10 held out by distill itself
UNSEEN = word_salads(20, seed=1)  # never in the file distill reads
# The production gate (AMORTIZED_MIN_SPEARMAN's default): this artifact's held-out median is 0.92,
# a random predictor's about 0.
GATE = Settings.__dataclass_fields__["amortized_min_spearman"].default


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a smoother encoder than the suite's (weights at 0.1, not 0.5): at 0.5 its
    values are close to noise that 90 texts do not teach."""
    return build_tiny_model(
        tmp_path_factory.mktemp("smooth-model"), ["negative", "neutral", "positive"], initializer_range=0.1
    )


# 40 epochs: 90 texts are 6 batches an epoch (minilm-sst2's 2,000 learn in the default 8).
TRAINING = ["--max-evals", "60", "--epochs", "40"]


def distill(texts: list[str], folder: Path, model_dir: Path, *options: str) -> Path:
    """`clarion distill` of these texts into folder/artifact, in a process of its own."""
    source, out = folder / "texts.txt", folder / "artifact"
    source.write_text("\n".join(texts) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "distill", str(source), "--out", str(out), *options],
        cwd=REPO,
        env=base_env(MODEL_DIR=str(model_dir), TORCH_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def artifact(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return distill(TRAIN, tmp_path_factory.mktemp("distill"), model_dir, *TRAINING)


def test_distill_writes_an_artifact_with_its_model_and_validation(artifact: Path, model_dir: Path) -> None:
    meta = json.loads((artifact / "amortized.json").read_text())
    service = ClarionService(Settings(model_dir=str(model_dir), torch_threads=1))
    model = service.load()
    try:
        assert meta["model_fingerprint"] == model.fingerprint and meta["labels"] == model.labels
        assert meta["trained_texts"] == 90 and meta["held_out_texts"] == 10
        validation = meta["validation"]
        assert set(validation) == {
            "granularity", "spearman_median", "top5_overlap_median", "comprehensiveness_aopc",
            "exact_comprehensiveness_aopc",
        }  # fmt: skip
        # It learnt: it ranks held-out words as exact does (a random ranking's median is about 0).
        # Comprehensiveness is measured (this smooth model's scores barely move: 0.002 for exact's
        # ranking, 0.0016 for the artifact's; minilm-sst2's are in docs/engine.md).
        assert validation["spearman_median"] >= GATE and validation["top5_overlap_median"] >= 0.6
        assert validation["comprehensiveness_aopc"] > 0 and validation["exact_comprehensiveness_aopc"] > 0
        # Its fit: its word values against its own labels' (token values summed per word), on the
        # texts it trained on and on the held-out ones.
        assert set(meta["fit"]) == {"training", "held_out"} and meta["fit"]["training"] >= GATE
        assert -1 <= meta["fit"]["held_out"] <= 1
        with np.load(artifact / "head.npz") as data:
            assert data["weights"].shape == (model.model.config.hidden_size, len(model.labels))
        assert (artifact / "encoder" / "config.json").is_file()  # the trained copy of the encoder
        assert meta["version"] == 2 and meta["output"] == "probability"
        assert meta["learning_rate"] == ENCODER_LEARNING_RATE
        assert meta["training_losses"][-1] < meta["training_losses"][0]
        assert meta["training_seconds"] > 0 and meta["validation_seconds"] > 0  # timed apart
        assert len((artifact / "records.jsonl").read_text().splitlines()) == 100  # the exact values it learnt
    finally:
        service.stop()


@pytest.fixture(scope="module")
def served(artifact: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {
        "MODEL_DIR": str(model_dir),
        "TORCH_THREADS": "1",
        "AMORTIZED_EXPLAINER": str(artifact),
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",  # so that /ping's 200 means the process that answers is ready
    }
    with running_service(tmp_path_factory.mktemp("amortized"), env) as service:
        wait_healthy(service)
        yield service


@pytest.mark.parametrize("granularity", ["token", "word", "sentence"])
def test_amortized_answers_additively_with_its_figures(
    served: Service, artifact: Path, granularity: str
) -> None:
    meta = json.loads((artifact / "amortized.json").read_text())
    body = {"data": ["a dull , lifeless plot .", "i loved it . superb acting ."], "explain": True}
    response = served.post(
        "/invocations", json={**body, "precision": "amortized", "granularity": granularity}
    )
    assert response.status_code == 200, response.text
    classified = served.post("/invocations", json={"data": body["data"]}).json()
    for result, plain in zip(response.json(), classified, strict=True):
        parameters = result["explanation_parameters"]
        assert parameters["precision"] == "amortized" and parameters["evaluations"] == 2
        assert parameters["amortized_validation"] == meta["validation"]
        # The shift is reported; it is part of training too (shared/explanation/distillation.py), so
        # the head never learnt to make it small, and its size says nothing of the values' quality.
        assert parameters["additivity_correction"] >= 0
        for label, output in result["model_output"].items():
            total = result["base_values"][label] + sum(values[label] for _, values in result["explanation"])
            assert total == pytest.approx(output, abs=1e-6)
        assert [p["label"] for p in result["prediction"]] == [p["label"] for p in plain["prediction"]]
    tokens = [unit for unit, _ in response.json()[0]["explanation"]]
    if granularity == "word":
        assert tokens == ["a", "dull", ",", "lifeless", "plot", "."]
    ping = served.get("/ping").json()
    assert ping["amortized"] == {"status": "ready", "validation": meta["validation"]}


def test_amortized_in_a_job_and_its_400s(served: Service) -> None:
    job = served.post("/explanations", json={"data": "a good film", "precision": "amortized"})
    assert job.status_code == 200 and job.json()["status"] == "succeeded", job.text
    assert job.json()["result"]["explanation_parameters"]["precision"] == "amortized"
    amortized = {"data": "good " * 200, "precision": "amortized", "granularity": "word"}
    for change, words in [
        ({"long_text": "windows"}, "no windows"),
        ({"output": "logit"}, 'learnt values of the probability (output "probability")'),
    ]:
        refused = served.post("/invocations", json={**amortized, "explain": True, **change})
        assert refused.status_code == 400 and words in refused.json()["error"]["message"], refused.text
        queued = served.post("/explanations", json={**amortized, **change})  # refused, not queued to fail
        assert queued.status_code == 400 and words in queued.json()["error"]["message"], queued.text


def test_a_missing_foreign_or_weak_artifact_is_a_clear_400(
    artifact: Path, model_dir: Path, tiny_multilabel_dir: Path, tmp_path: Path
) -> None:
    options = ExplainOptions(max_evals=40, precision="amortized")
    cases = [
        (Settings(model_dir=str(model_dir), torch_threads=1), "needs AMORTIZED_EXPLAINER"),
        (
            Settings(model_dir=str(tiny_multilabel_dir), torch_threads=1, amortized_explainer=str(artifact)),
            "trained for another model",
        ),
        (
            Settings(
                model_dir=str(model_dir),
                torch_threads=1,
                amortized_explainer=str(artifact),
                amortized_min_spearman=1.01,
            ),
            "below AMORTIZED_MIN_SPEARMAN",
        ),
        (
            Settings(model_dir=str(model_dir), torch_threads=1, amortized_explainer=str(tmp_path)),
            "no usable artifact",
        ),
    ]
    for settings, words in cases:
        service = ClarionService(settings)
        service.load()
        try:
            with pytest.raises(InvalidRequest, match=words):
                service.explain(["a good film"], options)
            with pytest.raises(InvalidRequest, match=words):
                service.check_options(options)  # a job is refused before it is queued
            status = service.status().model_dump(exclude_none=True)
            if settings.amortized_explainer:
                assert status["amortized"]["status"] == "refused" and words in status["amortized"]["error"]
            assert service.explain(["a good film"], options.model_copy(update={"precision": "exact"}))
        finally:
            service.stop()


def test_the_http_answer_without_an_artifact(model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(model_dir), "TORCH_THREADS": "1", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        response = requests.post(
            f"{service.url}/invocations",
            json={"data": "good", "explain": True, "precision": "amortized"},
            timeout=60,
        )
        assert response.status_code == 400 and "AMORTIZED_EXPLAINER" in response.json()["error"]["message"]


def test_amortized_agrees_with_exact_on_texts_it_never_saw(artifact: Path, model_dir: Path) -> None:
    """The artifact against exact on 20 texts outside its file, and against the untrained encoder with
    a head of random weights of the same shape and scale: the trained one clears the gate, the random
    one does not."""
    import copy

    from shared.analysis.agreement import ranking_agreement
    from shared.explanation.amortized import AmortizedExplainer, explain_amortized, load_amortized
    from shared.explanation.explainer import explain_encoded
    from shared.serving.classifier import run_unmasked

    service = ClarionService(Settings(model_dir=str(model_dir), torch_threads=1))
    service.load()
    try:
        trained = load_amortized(str(artifact), service.model, GATE)  # the gate lets it in
        options = ExplainOptions(max_evals=60, granularity="word", labels="all")
        encoded = service.model.encode(UNSEEN)
        unmasked = run_unmasked(service.engine, encoded)
        exact = explain_encoded(service.engine, encoded, options, None, unmasked)
        rng = np.random.default_rng(0)
        untrained = AmortizedExplainer(
            copy.deepcopy(service.model.model.base_model).eval(),
            rng.standard_normal(trained.weights.shape) * np.abs(trained.weights).mean(),
            trained.bias,
            trained.scale,
            {"validation": {}},
        )

        def median_spearman(explainer: AmortizedExplainer) -> float:
            predicted = explain_amortized(
                service.engine, explainer, encoded, [u[0] for u in unmasked], options
            )
            ranks = []
            for e, p in zip(exact, predicted, strict=True):
                label = max(e.model_output, key=e.model_output.get)
                rank, _ = ranking_agreement(e.values[label], p.values[label])
                ranks.append(rank)
            assert None not in ranks  # every text has 4 words or more
            return float(np.median(ranks))

        learnt, random_head = median_spearman(trained), median_spearman(untrained)
        # The trained copy clears the gate; the untrained encoder with a random head does not.
        assert learnt >= GATE > random_head
        assert learnt >= random_head + 0.5
    finally:
        service.stop()


def test_distill_labels_over_the_workers_as_jobs(artifact: Path, model_dir: Path, tmp_path: Path) -> None:
    """`--url --jobs 2`: the chunks go to a Redis + Celery deployment as explanation jobs, two at a
    time, run by both pool processes, and the labels equal the in-process ones. That deployment
    serves an artifact too: an amortized job it cannot answer is a 400 before it is queued."""
    env = {
        "MODEL_DIR": str(model_dir),
        "TORCH_THREADS": "1",
        "WORKER_CONCURRENCY": "2",
        "AMORTIZED_EXPLAINER": str(artifact),
    }
    with job_stack(tmp_path, env) as stack:
        remote = ["--url", stack.api.url, "--jobs", "2", "--chunk", "3", *TRAINING[:2], "--epochs", "1",
                  "--learning-rate", "1e-4"]  # fmt: skip
        out = distill(TRAIN[:24], tmp_path, model_dir, *remote)
        workers = set(re.findall(r"/(ForkPoolWorker-\d+)\] job \S+ succeeded", stack.worker.log()))
        windows = {
            "data": "good " * 200,
            "precision": "amortized",
            "granularity": "word",
            "long_text": "windows",
        }
        refused = stack.api.post("/explanations", json=windows)
        assert refused.status_code == 400 and "no windows" in refused.json()["error"]["message"], refused.text
    assert len(workers) == 2, stack.worker.log()[-3000:]  # both pool processes labelled
    assert json.loads((out / "amortized.json").read_text())["learning_rate"] == 1e-4

    def labels(path: Path) -> dict[int, dict]:
        return {r["line"]: r for r in map(json.loads, path.read_text().splitlines())}

    local, remote_records = labels(artifact / "records.jsonl"), labels(out / "records.jsonl")
    assert sorted(remote_records) == list(range(1, 25))
    ours, theirs = [], []
    for line, record in remote_records.items():
        assert record["text"] == local[line]["text"]
        ours.extend(v for _, values in record["explanation"] for v in values.values())
        theirs.extend(v for _, values in local[line]["explanation"] for v in values.values())
    # Chunks of 3 pad other rows than the artifact's chunks of 8: float32 noise of probabilities
    # near 1/3 (~1e-8), against values of this smooth model of ~1e-3, so within 1e-3 of the largest.
    assert_close_to_scale(ours, theirs, rel=1e-3)


@pytest.mark.parametrize(
    "option",
    [
        ["--epochs", "0"],
        ["--epochs", "-2"],
        ["--epochs", "2.5"],
        ["--learning-rate=-1e-4"],
        ["--learning-rate", "0"],
        ["--learning-rate", "nan"],
        ["--learning-rate", "inf"],
        ["--learning-rate", "fast"],
    ],
)
def test_distill_refuses_epochs_or_a_learning_rate_that_is_no_positive_number(
    option: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage error naming the option, before anything is read, labelled or written (0 epochs
    divided by zero in the learning-rate schedule; a negative or NaN rate trained nonsense)."""
    from shared.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(["distill", str(tmp_path / "texts.txt"), "--out", str(tmp_path / "artifact"), *option])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and f"argument {option[0].split('=')[0]}" in error, error
    assert "above 0" in error or "not a number" in error
    assert not (tmp_path / "artifact").exists()
