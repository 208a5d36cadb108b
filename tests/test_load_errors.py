"""Models Clarion cannot serve are refused at load with the cause named: /ping says "failed" and why,
and every request gets a 503 that says so, never a 500 later."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.errors import ModelLoadError
from shared.runtime.loading import load_text_model
from shared.settings import Settings
from tests.support import build_tiny_model, running_service, wait_until


def slow_tokenizer(directory: Path) -> Path:
    """A BERT classifier whose tokenizer is transformers' pure-Python one (no offsets)."""
    from transformers import AutoTokenizer

    build_tiny_model(directory, ["a", "b"])
    vocab = sorted(AutoTokenizer.from_pretrained(directory).get_vocab().items(), key=lambda item: item[1])
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab))
    (directory / "tokenizer.json").unlink()
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "tokenizer_class": "BertTokenizerLegacy"}))
    return directory


def headless(directory: Path) -> Path:
    """A base BERT checkpoint (no classification head in its weights) with its tokenizer."""
    from transformers import BertModel

    build_tiny_model(directory / "classifier", ["a", "b"])
    base = BertModel.from_pretrained(directory / "classifier")
    target = directory / "base"
    base.save_pretrained(target)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (directory / "classifier" / name).exists():
            shutil.copy(directory / "classifier" / name, target / name)
    return target


def custom_code(directory: Path) -> Path:
    """A checkpoint whose architecture lives in the repository's own code (auto_map)."""
    build_tiny_model(directory, ["a", "b"])
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "clarion-custom-test"
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForSequenceClassification": "modeling_custom.CustomClassifier",
    }
    config_path.write_text(json.dumps(config))
    (directory / "configuration_custom.py").write_text(
        "from transformers import BertConfig\n\n\nclass CustomConfig(BertConfig):\n"
        "    model_type = 'clarion-custom-test'\n"
    )
    (directory / "modeling_custom.py").write_text(
        "from transformers import BertForSequenceClassification\n"
        "from .configuration_custom import CustomConfig\n\n\n"
        "class CustomClassifier(BertForSequenceClassification):\n    config_class = CustomConfig\n"
    )
    return directory


CASES = {
    "slow tokenizer": (slow_tokenizer, "not a fast tokenizer"),
    "no classification head": (headless, "no trained sequence-classification head"),
    "custom code": (custom_code, "TRUST_REMOTE_CODE=true"),
}


@pytest.mark.parametrize("case", CASES)
def test_load_names_the_cause(case: str, tmp_path: Path) -> None:
    build, cause = CASES[case]
    directory = build(tmp_path / "model")
    with pytest.raises(ModelLoadError, match=cause.replace(".", r"\.")):
        load_text_model(Settings(model_dir=str(directory), torch_threads=1))


@pytest.mark.e2e
def test_the_service_says_why_on_ping_and_answers_503(tmp_path: Path) -> None:
    directory = headless(tmp_path / "model")
    with running_service(tmp_path, {"SERVERLESS": "true", "MODEL_DIR": str(directory)}) as service:

        def failed() -> bool:
            try:
                return service.get("/ping").json().get("status") == "failed"
            except Exception:
                return False

        wait_until(failed, 120, what=f"a failed /ping\n{service.log()[-2000:]}")
        ping = service.get("/ping")
        assert ping.status_code == 503
        assert "no trained sequence-classification head" in ping.json()["error"]
        response = service.post("/invocations", json={"data": "a text", "explain": True})
        assert response.status_code == 503
        assert "no trained sequence-classification head" in response.json()["error"]["message"]
        assert "Retry-After" not in response.headers  # a failed load does not pass by itself


def test_custom_code_loads_with_trust_remote_code(tmp_path: Path) -> None:
    directory = custom_code(tmp_path / "model")
    model = load_text_model(Settings(model_dir=str(directory), torch_threads=1, trust_remote_code=True))
    assert model.labels == ["a", "b"]
