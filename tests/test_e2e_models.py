"""End to end on the team kit's real models: `clarion serve` over a real socket, the seed's request."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import Service, running_service, wait_healthy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sst2_service(sst2_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_service(
        tmp_path_factory.mktemp("sst2"), {"MODEL_DIR": str(sst2_dir), "SERVERLESS": "true"}
    ) as svc:
        wait_healthy(svc)
        yield svc


def _top_positive_word(body: dict, label: str) -> str:
    words = [(values[label], token) for token, values in body["explanation"] if re.search(r"\w", token)]
    return max(words)[1]


def test_positive_review_is_positive_and_explained_by_its_words(sst2_service: Service) -> None:
    text = "I loved this film, the acting was superb."
    response = sst2_service.post("/invocations", data=f'{{"data":"{text}","explain":true}}'.encode())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction"][0]["label"] == "POSITIVE"
    top = _top_positive_word(body, "POSITIVE")
    assert top.lower() in re.findall(r"\w+", text.lower())
    assert top.lower() in {"loved", "superb"}
    assert body["model"] == "minilm-sst2"


def test_negative_review_is_negative(sst2_service: Service) -> None:
    body = sst2_service.post(
        "/invocations", json={"data": "A dull, lifeless mess with terrible acting.", "explain": True}
    ).json()
    assert body["prediction"][0]["label"] == "NEGATIVE"
    assert _top_positive_word(body, "NEGATIVE").lower() in {"dull", "lifeless", "mess", "terrible"}


def test_sst2_dev_sentences_classified_like_the_model_card(sst2_service: Service, sst2_dir: Path) -> None:
    lines = (sst2_dir.parents[1] / "data" / "sst2-dev.tsv").read_text().splitlines()[1:65]
    labels = [int(line.split("\t", 1)[0]) for line in lines]
    texts = [line.split("\t", 1)[1] for line in lines]
    body = sst2_service.post("/invocations", json={"data": texts}).json()
    predicted = [1 if item["prediction"][0]["label"] == "POSITIVE" else 0 for item in body]
    accuracy = sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)
    assert accuracy >= 0.8  # the card says 88.1 % on the whole dev split


def test_emotion_model_six_labels(emotion_dir: Path, tmp_path: Path) -> None:
    with running_service(tmp_path, {"MODEL_DIR": str(emotion_dir), "SERVERLESS": "true"}) as svc:
        wait_healthy(svc)
        body = svc.post(
            "/invocations",
            json={
                "inputs": "i feel so happy and cheerful today",
                "parameters": {"explain": True, "max_evals": 200},
            },
        ).json()
    assert len(body["prediction"]) == 6
    assert body["prediction"][0]["label"] == "joy"
    assert set(body["explanation"][1][1]) == {"anger", "fear", "joy", "love", "sadness", "surprise"}
    for label, base in body["base_values"].items():
        total = base + sum(values[label] for _, values in body["explanation"])
        assert abs(total - body["model_output"][label]) < 1e-4
    assert _top_positive_word(body, "joy") in {"happy", "cheerful"}
