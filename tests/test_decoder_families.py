"""The decoder classifiers of tests/families.py (GPT-2, Llama, Qwen2, Gemma) load like hub checkpoints
of their family, with its tokenizer's conventions and its pad id in the config; served, their exact
passes move to onnxruntime (a graph of Clarion's that computes the last layer at the position the head
reads) and score as transformers' pipeline does. tests/test_families.py runs every
other check of the family matrix on them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.runtime.loading import load_text_model
from shared.runtime.onnx import _graph_kind, onnx_exact
from shared.serving.service import ClarionService
from shared.settings import Settings
from tests.families import DECODER_FAMILIES, build_family_model, token_pieces
from tests.support import wait_until

LABELS = ["negative", "neutral", "positive"]
MODEL_CLASSES = {
    "gpt2": "GPT2ForSequenceClassification",
    "llama": "LlamaForSequenceClassification",
    "qwen2": "Qwen2ForSequenceClassification",
    "gemma": "GemmaForSequenceClassification",
}
TOKENIZER_CLASSES = {
    "gpt2": "GPT2Tokenizer",
    "llama": "LlamaTokenizer",
    "qwen2": "Qwen2Tokenizer",
    "gemma": "GemmaTokenizer",
}
# The config's pad id (as each family's fine-tuned classifiers have it), and the tokenizer's pad token:
# GPT-2's has none.
PADS = {
    "gpt2": ("<|endoftext|>", None),
    "llama": ("</s>", "</s>"),
    "qwen2": ("<|endoftext|>", "<|endoftext|>"),
    "gemma": ("<pad>", "<pad>"),
}
# The token a text starts with (None: the text's own first token); none of them ends a text with eos.
BOS = {"gpt2": None, "llama": "<s>", "qwen2": None, "gemma": "<bos>"}
TRICKY = [
    "I don't think it's the director's best. But it is.",
    "A naïve café owner's résumé.",
    "Loved it 🎬 so much 😀",
    "我喜欢这部电影",
    "Rated 4/5 (2019), tickets $12.50!",
    "I  don't like it. But then",
]
# Five lengths, so that a pass of them pads every row but one.
TEXTS = [
    "I loved this movie, the acting was superb and the story kept me hooked.",
    "Bad.",
    "It was okay. Not great, not awful, just okay.",
    "Déjà vu 😀",
    "Too many clichés, too little humor.",
]


@pytest.fixture(scope="module", params=DECODER_FAMILIES)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    family = request.param
    directory = build_family_model(tmp_path_factory.mktemp(family), family, LABELS)
    return (
        family,
        AutoTokenizer.from_pretrained(directory),
        AutoModelForSequenceClassification.from_pretrained(directory),
    )


def test_loads_as_the_family_classes_with_the_pad_id_in_its_config(loaded) -> None:
    family, tokenizer, model = loaded
    assert type(model).__name__ == MODEL_CLASSES[family]
    assert type(tokenizer).__name__ == TOKENIZER_CLASSES[family]
    assert tokenizer.is_fast and tokenizer.model_max_length == 128
    config = model.config
    assert config.model_type == family and config.vocab_size == len(tokenizer)
    assert config.num_hidden_layers == 2 and config.hidden_size == 32
    assert [config.id2label[i] for i in range(3)] == LABELS
    config_pad, tokenizer_pad = PADS[family]
    assert config.pad_token_id == tokenizer.convert_tokens_to_ids(config_pad)
    assert tokenizer.pad_token == tokenizer_pad
    assert config.eos_token_id == tokenizer.eos_token_id


def test_a_text_starts_with_bos_or_nothing_and_its_offsets_cover_it(loaded) -> None:
    family, tokenizer, _ = loaded
    for text in TRICKY:
        pieces = token_pieces(tokenizer, text)
        if BOS[family] is None:
            assert tokenizer.convert_tokens_to_ids(pieces[0][0]) not in tokenizer.all_special_ids
        else:
            assert pieces[0] == (BOS[family], (0, 0))
            pieces = pieces[1:]
        assert pieces[-1][0] != tokenizer.eos_token  # the head reads the text's own last token
        assert all(0 <= start <= end <= len(text) for _, (start, end) in pieces)
        covered = {i for _, (start, end) in pieces for i in range(start, end)}
        assert {i for i, char in enumerate(text) if not char.isspace()} <= covered, (text, pieces)


def test_space_convention_of_the_family(loaded) -> None:
    family, tokenizer, _ = loaded
    text = "I  don't like it. But then"
    pieces = token_pieces(tokenizer, text)
    if family in ("gpt2", "qwen2"):
        # byte-level BPE: `Ġ` is the space before a word, and the offsets include it
        assert ("Ġdon", (2, 6)) in pieces and ("ĠBut", (17, 21)) in pieces
    else:
        # SentencePiece BPE: `▁` is the space before a word; Llama prepends one to the text
        assert ("▁don", (2, 6)) in pieces and ("▁But", (17, 21)) in pieces
        first = "▁I" if family == "llama" else "I"
        assert pieces[1] == (first, (0, 1))
        # a character the vocabulary lacks falls back to its UTF-8 bytes
        assert [token for token, _ in token_pieces(tokenizer, "ß")[1:]][-2:] == ["<0xC3>", "<0x9F>"]


def pipeline_scores(model_dir: Path, texts: list[str]) -> np.ndarray:
    """transformers' pipeline on each text alone (texts x LABELS)."""
    import transformers

    classifier = transformers.pipeline(
        "text-classification", model=str(model_dir), tokenizer=str(model_dir), top_k=None
    )
    results = classifier(texts)  # the pipeline runs a list one text at a time: nothing pads
    return np.array(
        [[{r["label"]: r["score"] for r in result}[label] for label in LABELS] for result in results]
    )


class Recording:
    """An exact runner that records the shape of each pass it runs."""

    def __init__(self, runner) -> None:
        self.runner, self.name, self.max_width = runner, runner.name, runner.max_width
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        self.shapes.append(ids.shape)
        return self.runner(ids, attention)


@pytest.mark.parametrize("family,graph", [("gpt2", "last-gpt2"), ("llama", "last-llama")])
def test_served_exact_passes_move_to_onnxruntime_and_score_as_the_pipeline(
    family: str, graph: str, tmp_path: Path
) -> None:
    directory = build_family_model(tmp_path / family, family, LABELS, seed=3)
    settings = Settings(
        model_dir=str(directory),
        torch_threads=1,
        serverless=True,
        model_cache_dir=str(tmp_path / "cache"),
        fast_backend="exact",  # nothing to measure: exact's runner is what this test is about
    )
    assert settings.exact_backend == "auto"
    service = ClarionService(settings)
    service.load()
    try:
        wait_until(lambda: service.status().exact_backend == "onnxruntime", 120, what="onnxruntime")
        assert list((tmp_path / "cache" / "onnx").glob(f"*-{graph}-torch*.onnx"))
        runner = service.model.exact_runner = Recording(service.model.exact_runner)
        got = np.array(
            [
                [{s.label: s.score for s in c.prediction}[label] for label in LABELS]
                for c in service.classify(TEXTS)
            ]
        )
    finally:
        service.stop()
    assert sum(rows for rows, _ in runner.shapes) == len(TEXTS)  # every row ran on onnxruntime
    assert max(rows for rows, _ in runner.shapes) > 1  # rows of several lengths, padded together
    worst = float(np.max(np.abs(got - pipeline_scores(directory, TEXTS))))
    assert worst <= 1e-6, f"scores off the pipeline's by up to {worst:.2g}"


def test_a_row_ending_in_the_pad_id_is_read_before_it_on_onnxruntime_as_on_torch(tmp_path: Path) -> None:
    """GPT-2's pad id is its eos: the head of a row that ends in it reads the token before (transformers'
    rule, which the graph follows), padded among rows that do not."""
    model = load_text_model(
        Settings(model_dir=str(build_family_model(tmp_path, "gpt2", LABELS)), torch_threads=1)
    )
    runner = onnx_exact(model, tmp_path / "cache", threads=1)
    eos = model.tokenizer.eos_token_id
    rows = [e.ids for e in model.encode(TEXTS)]
    ending = [np.append(rows[0], eos), np.append(rows[1], [eos, eos]), *rows[2:]]
    ids, attention = model.padded(ending)
    expected = model.torch_forward(ids, attention)
    np.testing.assert_allclose(runner(ids, attention), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(expected, model.torch_forward(*model.padded(rows)), atol=1e-5, rtol=0)


# Variants the decoder graphs do not compute, which run transformers' own export instead.
VARIANTS = {
    "qwen2-sliding-window": (
        "Qwen2",
        {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
        "module",
    ),
    "llama-dynamic-rope": ("Llama", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "module"),
    "llama3-rope": (
        "Llama",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            }
        },
        "last-llama",
    ),
    "gpt2-cross-attention": ("GPT2", {"add_cross_attention": True}, "module"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_decoder_variant_gets_the_graph_that_computes_it(variant: str) -> None:
    import transformers

    name, options, kind = VARIANTS[variant]
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 64}
    config = getattr(transformers, f"{name}Config")(**sizes, **options)
    assert _graph_kind(getattr(transformers, f"{name}ForSequenceClassification")(config)) == kind


def test_a_sliding_window_decoder_runs_transformers_export_with_torchs_logits(tmp_path: Path) -> None:
    """Qwen2 with sliding-window layers: transformers' module, exported without its key-value cache,
    gives torch's logits on rows longer than the window, padded or not."""
    directory = build_family_model(tmp_path / "qwen2", "qwen2", LABELS)
    config = json.loads((directory / "config.json").read_text())
    config.update(
        use_sliding_window=True, sliding_window=4, layer_types=["full_attention", "sliding_attention"]
    )
    (directory / "config.json").write_text(json.dumps(config))
    model = load_text_model(Settings(model_dir=str(directory), torch_threads=1))
    runner = onnx_exact(model, tmp_path / "cache", threads=1)
    assert list((tmp_path / "cache" / "onnx").glob("*-module-torch*.onnx"))
    rows = [e.ids for e in model.encode(TEXTS)]
    for batch in (rows, rows[:1]):
        ids, attention = model.padded(batch)
        np.testing.assert_allclose(
            runner(ids, attention), model.torch_forward(ids, attention), atol=1e-5, rtol=0
        )
