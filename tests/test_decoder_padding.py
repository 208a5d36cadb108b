"""Decoder classifiers (GPT-2, Llama, ...): their head classifies each row's last token, found by
`config.pad_token_id`. Whatever holds a pad id (the config, the tokenizer, both or neither), a batch of
texts of several lengths gets the scores transformers' pipeline gives each text alone, explanations
run, and the onnxruntime backend and the amortized explainer's features agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.io.schemas import ExplainOptions
from shared.runtime.engine import CPU_PASS, Engine
from shared.runtime.model import TextModel
from shared.serving.classifier import classify
from shared.serving.service import ClarionService
from shared.settings import Settings
from tests.families import build_gpt2_model
from tests.support import assert_close_to_scale

LABELS = ["negative", "neutral", "positive"]
# Five lengths (3 to 17 tokens), two texts of 3: padded together, the short rows pad by up to 14
# tokens; never padded, the two of one length share a pass.
TEXTS = [
    "I loved this movie, the acting was superb and the story kept me hooked.",
    "Bad.",
    "It was okay. Not great, not awful, just okay.",
    "Déjà vu 😀",
    "Too many clichés, too little humor.",
    "Good!",
]
# Where the pad id is set: (in the config, in the tokenizer).
PADS = {
    "config": (True, False),  # fine-tuned GPT-2 classifiers: config.pad_token_id = eos, no pad token
    "tokenizer": (False, True),
    "both": (True, True),
    "none": (False, False),
}
# Scores (probabilities) are float32 sums: noise is ~1e-7; a wrong last token moves them by ~0.1-0.5.
TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=PADS)
def pad(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model_dir(pad: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config_pad, tokenizer_pad = PADS[pad]
    directory = tmp_path_factory.mktemp(f"gpt2-pad-{pad}")
    return build_gpt2_model(directory, LABELS, config_pad=config_pad, tokenizer_pad=tokenizer_pad, seed=1)


@pytest.fixture(scope="module")
def service(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ClarionService:
    settings = Settings(
        model_dir=str(model_dir),
        torch_threads=1,
        serverless=True,
        exact_backend="torch",
        model_cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    service = ClarionService(settings)
    service.load()
    yield service
    service.stop()


def pipeline_scores(model_dir: Path, texts: list[str]) -> np.ndarray:
    """transformers' pipeline on each text alone (texts x LABELS): one row, no padding at all."""
    import transformers

    classifier = transformers.pipeline(
        "text-classification", model=str(model_dir), tokenizer=str(model_dir), top_k=None
    )
    rows = []
    for text in texts:
        result = classifier(text)
        result = result[0] if isinstance(result[0], list) else result  # [[...]] for one text, top_k=None
        rows.append([{r["label"]: r["score"] for r in result}[label] for label in LABELS])
    return np.array(rows)


def scores_of(classifications) -> np.ndarray:
    return np.array(
        [[{s.label: s.score for s in c.prediction}[label] for label in LABELS] for c in classifications]
    )


def assert_scores_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    worst = float(np.max(np.abs(actual - expected)))
    assert worst <= TOLERANCE, f"scores off by up to {worst:.3g}"


def test_a_mixed_length_batch_scores_as_each_text_alone(
    pad: str, service: ClarionService, model_dir: Path
) -> None:
    expected = pipeline_scores(model_dir, TEXTS)
    assert_scores_equal(scores_of(service.classify(TEXTS)), expected)
    # again, from the result cache: what it keeps is the same numbers
    assert_scores_equal(scores_of(service.classify(TEXTS)), expected)


def test_rows_of_a_model_never_padded_share_passes_by_length(pad: str, service: ClarionService) -> None:
    """Where the config has no pad id, each pass holds rows of one length; otherwise one pass pads."""
    model = service.model
    assert model.pads == PADS[pad][0]
    passes: list[int] = []
    engine = Engine(model, CPU_PASS, observe_pass=lambda _, items: passes.append(sum(n for _, n in items)))
    try:
        classify(engine, TEXTS)
    finally:
        engine.stop()
    if model.pads:
        assert passes == [len(TEXTS)]
    else:
        assert engine.stats.padding == 0
        assert sorted(passes) == [1, 1, 1, 1, 2]  # "Bad." and "Good!" together


def shap_values_one_row_at_a_time(model: TextModel, text: str, max_evals: int) -> np.ndarray:
    """SHAP's Partition explainer (token-id masker) over the model run on one row at a time, as the
    pipeline runs a text: no padding, whatever the config holds."""
    import shap

    def f(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            rows = [model.model(input_ids=torch.tensor(row[None], dtype=torch.int64)).logits for row in ids]
        return model.outputs(torch.cat(rows).numpy(), "probability")

    masker = shap.maskers.Text(model.tokenizer, output_type="token_ids")
    np.random.seed(0)
    explainer = shap.Explainer(f, masker, algorithm="partition")
    return explainer([text], max_evals=max_evals, silent=True).values[0]


def test_explanations_run_and_equal_shaps_on_one_row_at_a_time(
    pad: str, service: ClarionService, model_dir: Path
) -> None:
    explanations = service.explain(TEXTS, ExplainOptions(max_evals=60))
    outputs = np.array([[e.model_output[label] for label in LABELS] for e in explanations])
    assert_scores_equal(outputs, pipeline_scores(model_dir, TEXTS))
    for text, explanation in zip(TEXTS[:2], explanations, strict=False):
        mine = np.array([explanation.values[label] for label in LABELS]).T
        assert_close_to_scale(mine, shap_values_one_row_at_a_time(service.model, text, 60), rel=1e-5)


def test_the_http_api_answers_a_mixed_length_batch(
    pad: str, service: ClarionService, model_dir: Path
) -> None:
    from api.app import create_app

    client = create_app(service.settings, service, load_model=False).test_client()
    response = client.post("/invocations", json={"data": TEXTS, "explain": True, "max_evals": 40})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    got = np.array(
        [[{p["label"]: p["score"] for p in item["prediction"]}[label] for label in LABELS] for item in body]
    )
    assert_scores_equal(got, pipeline_scores(model_dir, TEXTS))


def test_token_states_of_a_mixed_length_batch_are_each_rows_alone(pad: str, service: ClarionService) -> None:
    """The amortized explainer's features: one call for rows of several lengths."""
    model = service.model
    rows = [e.ids for e in model.encode(TEXTS)]
    together = model.token_states(rows)
    for row, states in zip(rows, together, strict=True):
        np.testing.assert_allclose(states, model.token_states([row])[0], atol=1e-5)


@pytest.mark.parametrize("pad_at", ["config", "none"])
def test_onnxruntime_scores_as_each_text_alone(pad_at: str, tmp_path: Path) -> None:
    config_pad, tokenizer_pad = PADS[pad_at]
    directory = build_gpt2_model(
        tmp_path / "model", LABELS, config_pad=config_pad, tokenizer_pad=tokenizer_pad, seed=1
    )
    settings = Settings(
        model_dir=str(directory),
        torch_threads=1,
        serverless=True,
        exact_backend="onnxruntime",
        model_cache_dir=str(tmp_path / "cache"),
    )
    service = ClarionService(settings)
    service.load()
    try:
        assert service.model.exact_backend == "onnxruntime"
        assert_scores_equal(scores_of(service.classify(TEXTS)), pipeline_scores(directory, TEXTS))
    finally:
        service.stop()
