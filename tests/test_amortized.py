"""The amortized explainer: `clarion distill` on the tiny model, then serving it (additivity, the
validation figures, word granularity, jobs), and refusing a foreign, weak or missing artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from shared.errors import InvalidRequest
from shared.io.schemas import ExplainOptions
from shared.serving.service import ClarionService
from shared.settings import Settings
from tests.support import REPO, Service, base_env, running_service, wait_healthy
from tests.test_analysis import REVIEWS

TEXTS = [text for text, _ in REVIEWS] + [
    "the acting was superb but the plot was thin .",
    "i loved this film .",
    "a dull and boring story .",
    "the actors are good , the story is not .",
    "not very good at all .",
]


@pytest.fixture(scope="module")
def artifact(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("distill")
    source = tmp / "texts.txt"
    source.write_text("\n".join(TEXTS * 4) + "\n")  # 40 texts: 36 to train on, 4 held out
    out = tmp / "artifact"
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "distill", str(source), "--out", str(out), "--max-evals", "60"],
        cwd=REPO,
        env=base_env(MODEL_DIR=str(tiny_model_dir), TORCH_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_distill_writes_an_artifact_with_its_model_and_validation(
    artifact: Path, tiny_model_dir: Path
) -> None:
    meta = json.loads((artifact / "amortized.json").read_text())
    service = ClarionService(Settings(model_dir=str(tiny_model_dir), torch_threads=1))
    model = service.load()
    try:
        assert meta["model_fingerprint"] == model.fingerprint and meta["labels"] == model.labels
        assert meta["trained_texts"] == 36 and meta["held_out_texts"] == 4
        validation = meta["validation"]
        assert set(validation) == {
            "granularity", "spearman_median", "top5_overlap_median", "comprehensiveness_aopc",
            "exact_comprehensiveness_aopc",
        }  # fmt: skip
        assert -1 <= validation["spearman_median"] <= 1 and 0 <= validation["top5_overlap_median"] <= 1
        with np.load(artifact / "amortized.npz") as data:
            hidden = model.model.config.hidden_size
            assert data["weights"].shape == (2 * hidden + 1, len(model.labels))
        assert len((artifact / "records.jsonl").read_text().splitlines()) == 40  # the exact values it learnt
    finally:
        service.stop()


@pytest.fixture(scope="module")
def served(artifact: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {
        "MODEL_DIR": str(tiny_model_dir),
        "TORCH_THREADS": "1",
        "AMORTIZED_EXPLAINER": str(artifact),
        "AMORTIZED_MIN_SPEARMAN": "-1",  # the tiny random model's values are noise: accept any figure
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
    windows = {"data": "good " * 200, "explain": True, "precision": "amortized", "granularity": "word",
               "long_text": "windows"}  # fmt: skip
    refused = served.post("/invocations", json=windows)
    assert refused.status_code == 400 and "no windows" in refused.json()["error"]["message"]


def test_a_missing_foreign_or_weak_artifact_is_a_clear_400(
    artifact: Path, tiny_model_dir: Path, tiny_multilabel_dir: Path, tmp_path: Path
) -> None:
    options = ExplainOptions(max_evals=40, precision="amortized")
    cases = [
        (Settings(model_dir=str(tiny_model_dir), torch_threads=1), "needs AMORTIZED_EXPLAINER"),
        (
            Settings(model_dir=str(tiny_multilabel_dir), torch_threads=1, amortized_explainer=str(artifact)),
            "trained for another model",
        ),
        (
            Settings(
                model_dir=str(tiny_model_dir),
                torch_threads=1,
                amortized_explainer=str(artifact),
                amortized_min_spearman=1.01,
            ),
            "below AMORTIZED_MIN_SPEARMAN",
        ),
        (
            Settings(model_dir=str(tiny_model_dir), torch_threads=1, amortized_explainer=str(tmp_path)),
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


def test_the_http_answer_without_an_artifact(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "TORCH_THREADS": "1", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        response = requests.post(
            f"{service.url}/invocations",
            json={"data": "good", "explain": True, "precision": "amortized"},
            timeout=60,
        )
        assert response.status_code == 400 and "AMORTIZED_EXPLAINER" in response.json()["error"]["message"]
