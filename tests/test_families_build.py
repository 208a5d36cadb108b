"""The tiny encoder models of tests/families.py load like hub checkpoints of their family, with that
family's tokenizer class and offset conventions, and run in a text-classification pipeline (the
decoders': tests/test_decoder_families.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.families import ENCODER_FAMILIES, build_family_model, token_pieces

LABELS = ["negative", "neutral", "positive"]
MODEL_CLASSES = {
    "bert": "BertForSequenceClassification",
    "distilbert": "DistilBertForSequenceClassification",
    "electra": "ElectraForSequenceClassification",
    "roberta": "RobertaForSequenceClassification",
    "xlm-roberta": "XLMRobertaForSequenceClassification",
    "deberta-v2": "DebertaV2ForSequenceClassification",
    "albert": "AlbertForSequenceClassification",
    "modernbert": "ModernBertForSequenceClassification",
}
TOKENIZER_CLASSES = {
    "bert": "BertTokenizer",
    "distilbert": "DistilBertTokenizer",
    "electra": "BertTokenizer",
    "roberta": "RobertaTokenizer",
    "xlm-roberta": "XLMRobertaTokenizer",
    "deberta-v2": "DebertaV2Tokenizer",
    "albert": "AlbertTokenizer",
    "modernbert": "TokenizersBackend",
}
TRICKY = [
    "I don't think it's the director's best. But it is.",
    "A naïve café owner's résumé.",
    "Loved it 🎬 so much 😀",
    "我喜欢这部电影",
    "日本語のテキスト",
    "Rated 4/5 (2019), tickets $12.50!",
    "I  don't like it. But then",
]
DOUBLE_SPACE = "I  don't like it. But then"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run far faster on one thread than on two contended ones; restore the setting after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=ENCODER_FAMILIES)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    family = request.param
    return family, build_family_model(tmp_path_factory.mktemp(family), family, LABELS)


@pytest.fixture(scope="module")
def loaded(built: tuple[str, Path]):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    family, directory = built
    return (
        family,
        directory,
        AutoTokenizer.from_pretrained(directory),
        AutoModelForSequenceClassification.from_pretrained(directory),
    )


def test_loads_as_the_family_classes(loaded) -> None:
    family, _, tokenizer, model = loaded
    assert type(model).__name__ == MODEL_CLASSES[family]
    assert type(tokenizer).__name__ == TOKENIZER_CLASSES[family]
    assert tokenizer.is_fast
    assert tokenizer.model_max_length == 128
    config = model.config
    assert config.model_type == family
    assert config.vocab_size == len(tokenizer)
    assert config.max_position_embeddings >= 128 + 2
    assert [config.id2label[i] for i in range(3)] == LABELS
    assert config.problem_type == "single_label_classification"


def test_offsets_cover_the_text_with_specials_at_the_edges(loaded) -> None:
    _, _, tokenizer, _ = loaded
    assert tokenizer.mask_token is not None and tokenizer.mask_token_id is not None
    assert tokenizer.pad_token_id is not None and tokenizer.unk_token_id is not None
    masked = tokenizer(f"I {tokenizer.mask_token} it.")["input_ids"]
    assert masked.count(tokenizer.mask_token_id) == 1
    for text in TRICKY:
        pieces = token_pieces(tokenizer, text)
        assert pieces[0] == (tokenizer.cls_token, (0, 0))
        assert pieces[-1] == (tokenizer.sep_token, (0, 0))
        inner = [offsets for _, offsets in pieces[1:-1]]
        assert all(0 <= start <= end <= len(text) for start, end in inner)
        assert [start for start, _ in inner] == sorted(start for start, _ in inner)
        covered = {i for start, end in inner for i in range(start, end)}
        assert {i for i, char in enumerate(text) if not char.isspace()} <= covered, (text, pieces)


def test_space_convention_of_the_family(loaded) -> None:
    family, _, tokenizer, _ = loaded
    text = DOUBLE_SPACE
    pieces = token_pieces(tokenizer, text)
    spans = {token: text[start:end] for token, (start, end) in pieces[1:-1]}
    if family in ("bert", "distilbert", "electra"):
        # WordPiece: lower case, no space marker, offsets never include a space
        assert ("don", (3, 6)) in pieces and ("but", (18, 21)) in pieces
        assert not any(text[start:end] != text[start:end].strip() for _, (start, end) in pieces)
    elif family == "roberta":
        # byte-level BPE with RobertaProcessing(trim_offsets=True): `Ġ` tokens' offsets skip the space;
        # the stand-alone `Ġ` of a double space is trimmed to an empty span
        assert ("Ġdon", (3, 6)) in pieces and ("ĠBut", (18, 21)) in pieces
        assert ("Ġ", (2, 2)) in pieces
    elif family == "modernbert":
        # byte-level BPE, plain template: offsets keep the space before a word, and the first space
        # of a double space is a token of its own
        assert ("Ġdon", (2, 6)) in pieces and ("ĠBut", (17, 21)) in pieces
        assert spans["Ġdon"] == " don"
        assert ("Ġ", (1, 2)) in pieces
    elif family in ("xlm-roberta", "albert"):
        # WhitespaceSplit + Metaspace: `▁word` offsets start at the word
        word = "▁but" if family == "albert" else "▁But"
        assert ("▁don", (3, 6)) in pieces and (word, (18, 21)) in pieces
        assert not any(text[start:end] != text[start:end].strip() for _, (start, end) in pieces)
        # a stand-alone `▁` shares the offsets of the piece after it
        emoji = token_pieces(tokenizer, "Loved it 🎬 so much")
        bare = [i for i, (token, _) in enumerate(emoji) if token == "▁"]
        assert bare and all(emoji[i][1] == emoji[i + 1][1] for i in bare), emoji
    elif family == "deberta-v2":
        # Metaspace without a whitespace split (DeBERTa-v3): `▁word` offsets start at the space before
        # the word (runs of spaces are one space), and a stand-alone `▁` inside the text is that space
        assert ("▁don", (2, 6)) in pieces and ("▁But", (17, 21)) in pieces
        assert spans["▁don"] == " don"
        emoji_text = "Loved it 🎬 so much"
        emoji = token_pieces(tokenizer, emoji_text)
        bare = [offsets for token, offsets in emoji[2:-1] if token == "▁"]
        assert bare and all(emoji_text[start:end] == " " for start, end in bare), emoji
    else:  # pragma: no cover
        pytest.fail(f"no convention for {family}")


def test_pipeline_scores_every_label_on_tricky_texts(built: tuple[str, Path]) -> None:
    from transformers import pipeline

    _, directory = built
    classify = pipeline("text-classification", model=str(directory), tokenizer=str(directory), top_k=None)
    results = classify(TRICKY)
    assert len(results) == len(TRICKY)
    for scores in results:
        assert sorted(item["label"] for item in scores) == sorted(LABELS)
        assert sum(item["score"] for item in scores) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("family", ENCODER_FAMILIES)
def test_default_label_names_and_regression_configs_load(family: str, tmp_path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    plain = build_family_model(
        tmp_path / "plain", family, ["no", "yes"], id2label=False, problem_type=None, max_length=32
    )
    config = AutoConfig.from_pretrained(plain)
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1"} and config.problem_type is None
    assert AutoTokenizer.from_pretrained(plain).model_max_length == 32

    regression = build_family_model(tmp_path / "regression", family, num_labels=1, problem_type="regression")
    model = AutoModelForSequenceClassification.from_pretrained(regression)
    tokenizer = AutoTokenizer.from_pretrained(regression)
    assert model.config.problem_type == "regression" and model.config.id2label == {0: "LABEL_0"}
    with torch.no_grad():
        logits = model(**tokenizer(["fine", "a longer text 😀"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, 1)


@pytest.mark.parametrize("family", ["bert", "xlm-roberta", "modernbert"])
def test_same_seed_same_files(family: str, tmp_path: Path) -> None:
    def digest(directory: Path) -> dict[str, str]:
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in directory.iterdir()}

    first = build_family_model(tmp_path / "a", family, LABELS, seed=7)
    second = build_family_model(tmp_path / "b", family, LABELS, seed=7)
    other = build_family_model(tmp_path / "c", family, LABELS, seed=8)
    assert digest(first) == digest(second)
    assert digest(first)["model.safetensors"] != digest(other)["model.safetensors"]
    assert digest(first)["tokenizer.json"] == digest(other)["tokenizer.json"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_modernbert_pooling(pooling: str, tmp_path: Path) -> None:
    from transformers import AutoConfig, pipeline

    directory = build_family_model(tmp_path, "modernbert", ["a", "b"], classifier_pooling=pooling)
    assert AutoConfig.from_pretrained(directory).classifier_pooling == pooling
    classify = pipeline("text-classification", model=str(directory), tokenizer=str(directory), top_k=None)
    assert len(classify(["I  don't like it. But then"])[0]) == 2


def test_unknown_family_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown family"):
        build_family_model(tmp_path, "t5", LABELS)
