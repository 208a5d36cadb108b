"""Exact passes through onnxruntime: torch's logits, a cached export, a guarded swap, torch as fallback."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.errors import ModelLoadError
from shared.runtime.loading import load_text_model
from shared.runtime.model import TextModel
from shared.runtime.onnx import CHECK_TEXT, _check, onnx_exact
from shared.serving.service import ClarionService
from shared.settings import Settings
from tests.support import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> TextModel:
    return load_text_model(Settings(model_dir=str(tiny_model_dir), torch_threads=1))


def rows_of(model: TextModel, texts: list[str]) -> list[np.ndarray]:
    return [e.ids for e in model.encode(texts)]


def test_logits_equal_torchs_padded_or_not(tiny: TextModel, tmp_path: Path) -> None:
    runner = onnx_exact(tiny, tmp_path, threads=1)
    for rows in (
        rows_of(tiny, ["the film was great", "bad", "i loved it , not very boring at all"]),
        rows_of(tiny, ["the plot was boring and the acting awful"]) * 7,
    ):
        ids, attention = tiny.padded(rows)
        expected = tiny.torch_forward(ids, attention)
        np.testing.assert_allclose(runner(ids, attention), expected, atol=1e-5, rtol=0)
    tiny.exact_runner = runner  # and through the model's own pass, as the engine calls it
    try:
        assert tiny.exact_backend == "onnxruntime"
        rows = rows_of(tiny, ["good", "not good at all"])
        np.testing.assert_allclose(
            tiny.forward(rows), tiny.torch_forward(*tiny.padded(rows)), atol=1e-5, rtol=0
        )
    finally:
        tiny.exact_runner = None


# Tiny random-weight classifiers of each family with a graph of its own (and one without), saved beside
# the BERT tiny model's WordPiece tokenizer (the graphs only need ids): 2 layers of width 32, 2 heads,
# feed-forward 64, 128 positions. Weights 10x wider than the default initialisation: logits of order 1,
# so that a graph wrong by a little differs from torch by far more than 1e-5.
BERT_SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
MODERNBERT = {
    **BERT_SIZES,
    "local_attention": 16,
    "global_attn_every_n_layers": 2,
    **{f"{token}_token_id": i for token, i in (("bos", 2), ("cls", 2), ("eos", 3), ("sep", 3))},
}
# family: (config class, model class, sizes and options in its names, the graph's kind)
FAMILIES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "bert": ("BertConfig", "BertForSequenceClassification", BERT_SIZES, "cls-bert"),
    # position ids start after the padding id: 128 tokens need 130 positions
    "roberta": (
        "RobertaConfig",
        "RobertaForSequenceClassification",
        {**BERT_SIZES, "max_position_embeddings": 130},
        "cls-roberta",
    ),
    "xlm-roberta": (
        "XLMRobertaConfig",
        "XLMRobertaForSequenceClassification",
        {**BERT_SIZES, "max_position_embeddings": 130},
        "cls-roberta",
    ),
    "camembert": (
        "CamembertConfig",
        "CamembertForSequenceClassification",
        {**BERT_SIZES, "max_position_embeddings": 130},
        "cls-roberta",
    ),
    "electra": (
        "ElectraConfig",
        "ElectraForSequenceClassification",
        {**BERT_SIZES, "embedding_size": 16},
        "cls-electra",
    ),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
        "cls-distilbert",
    ),
    "albert": (
        "AlbertConfig",
        "AlbertForSequenceClassification",
        {**BERT_SIZES, "embedding_size": 16},
        "cls-albert",
    ),
    # v3's: relative positions in log buckets past 8, shared keys, no absolute positions
    "deberta-v3": (
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        {
            **BERT_SIZES,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 16,
            "position_biased_input": False,
            "share_att_key": True,
            "norm_rel_ebd": "layer_norm",
        },
        "cls-deberta-v2",
    ),
    # v2-xlarge's: a convolution after the first layer, positions of their own projections, no buckets
    "deberta-v2-conv": (
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        {**BERT_SIZES, "relative_attention": True, "pos_att_type": ["p2c", "c2p"], "conv_kernel_size": 3},
        "cls-deberta-v2",
    ),
    # a global layer, then one seeing 8 positions either side (the last: at [CLS] only, or whole)
    "modernbert-cls": (
        "ModernBertConfig",
        "ModernBertForSequenceClassification",
        {**MODERNBERT, "classifier_pooling": "cls"},
        "cls-modernbert",
    ),
    "modernbert-mean": (
        "ModernBertConfig",
        "ModernBertForSequenceClassification",
        {**MODERNBERT, "classifier_pooling": "mean"},
        "full-modernbert",
    ),
    # none of Clarion's graphs: transformers' module
    "mpnet": (
        "MPNetConfig",
        "MPNetForSequenceClassification",
        {**BERT_SIZES, "max_position_embeddings": 130},
        "module",
    ),
}


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("wordpiece"), ["a", "b", "c"])


def build_family(directory: Path, wordpiece_dir: Path, family: str) -> Path:
    """The family's tiny classifier beside a copy of the WordPiece tokenizer, whose maximum length is
    raised to the 128 positions."""
    import torch
    import transformers

    config_class, model_class, options, _ = FAMILIES[family]
    shutil.copytree(wordpiece_dir, directory)
    tokenizer_config = directory / "tokenizer_config.json"
    tokenizer_config.write_text(
        json.dumps({**json.loads(tokenizer_config.read_text()), "model_max_length": 128})
    )
    config = getattr(transformers, config_class)(
        **{"max_position_embeddings": 128, **options},
        vocab_size=128,  # the tokenizer's ids are fewer
        pad_token_id=0,  # the tokenizer's [PAD]: RoBERTa's position ids and padding embeddings follow it
        initializer_range=0.2,
        id2label={0: "a", 1: "b", 2: "c"},
        label2id={"a": 0, "b": 1, "c": 2},
    )
    torch.manual_seed(0)
    getattr(transformers, model_class)(config).eval().save_pretrained(directory)
    return directory


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_gets_its_graph_with_torchs_logits_up_to_its_maximum_length(
    family: str, wordpiece_dir: Path, tmp_path: Path
) -> None:
    """A classifier whose head reads one position gets a graph with its last layer at that position
    only (a ModernBERT with mean pooling one with its last layer whole; another architecture,
    transformers' module): torch's logits to 1e-5, padded or not, short rows and rows of the model's
    maximum length, which its passes run to."""
    model_dir = build_family(tmp_path / family, wordpiece_dir, family)
    model = load_text_model(Settings(model_dir=str(model_dir), torch_threads=1))
    assert model.max_length == 128
    runner = onnx_exact(model, tmp_path / "cache", threads=1)
    kind = FAMILIES[family][3]
    assert [p.name for p in (tmp_path / "cache" / "onnx").glob(f"*-{kind}-torch*.onnx")], kind
    assert runner.max_width >= model.max_length
    longest = rows_of(model, [" ".join(["the film was not very good , i loved it"] * 20)])[0]
    assert len(longest) == model.max_length
    batches = [
        rows_of(model, ["the film was great", "bad", "i loved it , not very boring at all", "a"]),
        rows_of(model, ["the plot was boring and the acting awful"]) * 3,
        [longest, longest[:70], longest[:5]],
        [longest] * 2,
    ]
    for rows in batches:
        ids, attention = model.padded(rows)
        expected = model.torch_forward(ids, attention)
        assert np.abs(expected).max() > 0.1  # logits far from 0: a wrong graph would not pass as right
        np.testing.assert_allclose(runner(ids, attention), expected, atol=1e-5, rtol=0)


def test_a_graph_off_only_on_long_rows_keeps_the_narrower_passes(
    wordpiece_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Right on short rows but off, or failing, on rows of the maximum length (128): its passes run up
    to the widest narrower width it is right at (64, else the short rows'), wider ones stay on torch,
    and the log says why."""
    model_dir = build_family(tmp_path / "bert", wordpiece_dir, "bert")
    model = load_text_model(Settings(model_dir=str(model_dir), torch_threads=1))

    class OffWhenLong:
        name, max_width = "onnxruntime", 1 << 30

        def __init__(self, off: float | None, beyond: int) -> None:
            self.off, self.beyond = off, beyond

        def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
            logits = model.torch_forward(ids, attention)
            if ids.shape[1] <= self.beyond:
                return logits
            if self.off is None:
                raise RuntimeError("indices element out of data bounds, idx=130")
            return logits + self.off

    checked = len(rows_of(model, [CHECK_TEXT])[0])  # the short check rows' width: right there
    for off, beyond, widest, reason in (
        (1e-4, 100, 64, "differs from torch by 1.0e-04"),
        (None, 100, 64, "fails (indices element out"),
        (1e-4, checked, checked, "differs from torch by 1.0e-04"),
    ):
        runner = OffWhenLong(off, beyond)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _check(model, runner)
        assert runner.max_width == widest
        assert reason in caplog.text
        assert f"at 128 tokens: passes wider than {widest} tokens stay on torch" in caplog.text


def test_fast_runs_its_chosen_runner_else_exacts(tiny: TextModel) -> None:
    calls: list[str] = []

    class Counting:
        max_width = 1 << 30

        def __init__(self, name: str) -> None:
            self.name = name

        def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
            calls.append(self.name)
            return tiny.torch_forward(ids, attention)

    rows = rows_of(tiny, ["good", "not good at all"])
    tiny.exact_runner = Counting("onnxruntime")
    try:
        tiny.forward(rows, "fast")  # no runner chosen for fast (yet, or none passed): exact's
        tiny.fast_runner = Counting("onnxruntime-int8")
        tiny.forward(rows, "fast")
        tiny.forward(rows, "exact")
    finally:
        tiny.exact_runner = tiny.fast_runner = None
    assert calls == ["onnxruntime", "onnxruntime-int8", "onnxruntime"]


def test_the_export_is_cached_and_a_damaged_one_is_replaced(tiny: TextModel, tmp_path: Path) -> None:
    onnx_exact(tiny, tmp_path, threads=1, fusion="off")
    (graph,) = (tmp_path / "onnx").glob("*.onnx")
    assert tiny.fingerprint in graph.name
    exported_at = graph.stat().st_mtime_ns
    onnx_exact(tiny, tmp_path, threads=1, fusion="off")
    assert graph.stat().st_mtime_ns == exported_at  # reused, not exported again
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [graph.name]  # no temporary files left

    graph.write_bytes(b"not a graph")
    with pytest.raises(ModelLoadError, match="could not open"):
        onnx_exact(tiny, tmp_path, threads=1, fusion="off")
    assert not graph.exists()  # dropped: the next start exports again
    onnx_exact(tiny, tmp_path, threads=1, fusion="off")
    assert graph.exists()


def test_a_graph_that_disagrees_with_torch_is_refused(tiny: TextModel) -> None:
    class Wrong:
        name = "onnxruntime"

        def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
            return tiny.torch_forward(ids, attention) + 1e-3

    with pytest.raises(ModelLoadError, match="differs from torch"):
        _check(tiny, Wrong())


def wait_for_backend(service: ClarionService, backend: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while service.status().exact_backend != backend:
        assert time.monotonic() < deadline, f"still {service.status().exact_backend}"
        time.sleep(0.1)


def test_the_service_serves_with_torch_and_moves_to_onnxruntime(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Fast stays on exact's path: its measurement would build an int8 graph beside the exact one.
    settings = Settings(
        model_dir=str(tiny_model_dir), model_cache_dir=str(tmp_path), torch_threads=1, fast_backend="exact"
    )
    assert settings.exact_backend == "auto"
    service = ClarionService(settings)
    service.load()
    assert service.status().status == "healthy"  # healthy before the export is done
    before = service.classify(["the film was great"])[0]
    wait_for_backend(service, "onnxruntime")
    after = service.classify(["the film was great"])[0]
    for a, b in zip(before.prediction, after.prediction, strict=True):
        assert a.label == b.label and abs(a.score - b.score) < 1e-5
    service.engine.stop()


def test_torch_only_when_asked_and_onnxruntime_before_healthy(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Fast stays on exact's path: its measurement, still building an int8 graph in the cache's
    # scratch folders after the exact graph is in place, would race the look into that cache below.
    def settings(cache: Path, backend: str = "auto") -> Settings:
        return Settings(
            model_dir=str(tiny_model_dir),
            model_cache_dir=str(cache),
            exact_backend=backend,
            fast_backend="exact",
        )

    torch_only = ClarionService(settings(tmp_path / "torch", "torch"))
    torch_only.load()
    # Beside it, "auto" from its own cache: once that one has exported, checked and moved to
    # onnxruntime, torch-only had the same time to do so and did not even export.
    auto = ClarionService(settings(tmp_path / "auto"))
    auto.load()
    wait_for_backend(auto, "onnxruntime")
    assert list((tmp_path / "auto").rglob("*.onnx"))
    assert torch_only.status().exact_backend == "torch"
    assert not (tmp_path / "torch").exists()
    auto.engine.stop()
    torch_only.engine.stop()
    asked = ClarionService(settings(tmp_path, "onnxruntime"))
    asked.load()
    assert asked.status().exact_backend == "onnxruntime"  # part of loading, not after it
    asked.engine.stop()


def test_an_export_failure_leaves_torch_serving(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")  # the export cannot be written
    service = ClarionService(Settings(model_dir=str(tiny_model_dir), model_cache_dir=str(blocked)))
    with caplog.at_level(logging.WARNING):
        service.load()
        deadline = time.monotonic() + 30
        while "exact passes stay on torch" not in caplog.text:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert service.status().exact_backend == "torch"
    assert service.classify(["good"])[0].prediction
    service.engine.stop()


def test_fast_runs_an_int8_graph_cached_beside_the_fp32_one(
    tiny: TextModel, tmp_path: Path, monkeypatch
) -> None:
    """precision "fast" on a CPU without bf16: the exact graph quantized to int8, made once and cached
    under the fp32 export's name, scores close to torch's (checked at start), and used by fast passes."""
    from shared.runtime import onnx

    exact = onnx_exact(tiny, tmp_path, threads=1)
    runner = onnx.onnx_int8(tiny, exact, threads=1)
    assert runner.name == "onnxruntime-int8" and runner.max_width == exact.max_width
    assert runner.path == exact.export.with_name(exact.export.stem + "-int8-qint8-perchannel.onnx")
    assert runner.path.stat().st_size < exact.export.stat().st_size  # int8 weights
    made = runner.path.stat().st_mtime_ns
    again = onnx.onnx_int8(tiny, exact, threads=1)
    assert again.path == runner.path and runner.path.stat().st_mtime_ns == made  # cached, not made again

    rows = rows_of(tiny, ["the film was great", "bad", "i loved it , not very boring at all"])
    ids, attention = tiny.padded(rows)
    quantized, fp32 = runner(ids, attention), exact(ids, attention)
    assert np.abs(quantized - fp32).max() > 0  # a different graph
    scores = tiny.outputs(quantized, "probability") - tiny.outputs(fp32, "probability")
    assert np.abs(scores).max() <= onnx.INT8_TOLERANCE
    tiny.exact_runner, tiny.fast_runner = exact, runner
    try:
        assert tiny.fast_backend == "onnxruntime-int8"
        np.testing.assert_array_equal(tiny.forward(rows, "fast"), quantized)
        np.testing.assert_allclose(tiny.forward(rows, "exact"), fp32, atol=1e-6)  # exact is untouched
    finally:
        tiny.exact_runner = tiny.fast_runner = None

    monkeypatch.setattr(onnx, "INT8_TOLERANCE", 0.0)  # a quantization that moved scores is refused
    with pytest.raises(ModelLoadError, match="int8 graph"):
        onnx.onnx_int8(tiny, exact, threads=1)


# The fused graph (shared/runtime/fusion.py): onnxruntime's transformer optimizer on each graph kind.
FUSED_OPERATORS = {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"}


def operators(path: Path) -> dict[str, int]:
    """How many nodes of each operator the graph at `path` holds."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_the_fused_graph_fuses_attention_and_layer_norms_with_the_same_logits(
    tiny: TextModel, tmp_path: Path
) -> None:
    """The tiny BERT (2 layers): attention fused in the first layer (the last one's queries are [CLS]
    only, which the fused operator cannot take), both residual LayerNorms of each layer, and the
    embeddings; the export itself holds none of these, so the counts are the optimizer's. Its logits
    are the unfused graph's to 1e-5 of their scale; it is cached beside the export, and int8 is still
    made from the export."""
    from shared.runtime import onnx

    fused = onnx_exact(tiny, tmp_path, threads=1, fusion="on")
    unfused = onnx_exact(tiny, tmp_path, threads=1, fusion="off")
    assert fused.fused is not None
    counts = {"Attention": 1, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 1}
    assert {op: fused.fused.get(op, 0) for op in FUSED_OPERATORS} == counts
    assert {op: operators(fused.path).get(op, 0) for op in FUSED_OPERATORS} == counts  # in the file
    assert not set(operators(unfused.path)) & FUSED_OPERATORS
    assert fused.export == unfused.path and unfused.fused is None
    assert fused.path == unfused.path.with_name(unfused.path.stem + "-fused-bert-mask.onnx")
    assert fused.max_width == unfused.max_width

    for rows in (
        rows_of(tiny, ["the film was great", "bad", "i loved it , not very boring at all"]),
        rows_of(tiny, ["the plot was boring and the acting awful"]) * 7,
        rows_of(tiny, [" ".join(["the film was not very good , i loved it"] * 20), "a"]),
    ):
        ids, attention = tiny.padded(rows)
        expected = unfused(ids, attention)
        assert np.abs(fused(ids, attention) - expected).max() <= 1e-5 * np.abs(expected).max()
        np.testing.assert_allclose(fused(ids, attention), tiny.torch_forward(ids, attention), atol=1e-5)

    int8 = onnx.onnx_int8(tiny, fused, threads=1)
    assert int8.path == unfused.path.with_name(unfused.path.stem + "-int8-qint8-perchannel.onnx")

    fused.path.write_bytes(b"not a graph")  # a damaged fused graph: the unfused one runs, ...
    assert onnx_exact(tiny, tmp_path, threads=1, fusion="on").fused is None
    assert not fused.path.exists()  # ... and the next start makes it again
    assert onnx_exact(tiny, tmp_path, threads=1, fusion="on").fused == fused.fused


# What the optimizer fuses in each graph kind's tiny model (2 layers; None: not tried). Attention in
# the first layer of the BERT-shaped graphs; DeBERTa's disentangled and ModernBERT's rotary attention
# are not its pattern, nor RoBERTa's embeddings (positions counted from the padding id): only their
# LayerNorms fuse.
FUSED = {
    "bert": {"Attention": 1, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 1},
    "roberta": {"Attention": 1, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 0},
    "electra": {"Attention": 1, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 1},
    "distilbert": {"Attention": 1, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 1},
    "albert": {"Attention": 1, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 1},
    "deberta-v3": {"Attention": 0, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 0},
    "modernbert-cls": {"Attention": 0, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 0},
    "modernbert-mean": {"Attention": 0, "SkipLayerNormalization": 4, "EmbedLayerNormalization": 0},
    "mpnet": None,  # transformers' module: the optimizer's patterns are Clarion's encoder graphs'
}


@pytest.mark.parametrize("family", list(FUSED))
def test_each_graph_kind_fuses_what_the_optimizer_recognises(
    family: str, wordpiece_dir: Path, tmp_path: Path
) -> None:
    model_dir = build_family(tmp_path / family, wordpiece_dir, family)
    model = load_text_model(Settings(model_dir=str(model_dir), torch_threads=1))
    fused = onnx_exact(model, tmp_path / "cache", threads=1, fusion="on")
    if FUSED[family] is None:
        assert fused.fused is None and not list((tmp_path / "cache").rglob("*-fused-*"))
        return
    assert fused.fused is not None
    assert {op: fused.fused.get(op, 0) for op in FUSED_OPERATORS} == FUSED[family]
    unfused = onnx_exact(model, tmp_path / "cache", threads=1, fusion="off")
    assert not set(operators(unfused.path)) & FUSED_OPERATORS
    longest = rows_of(model, [" ".join(["the film was not very good , i loved it"] * 20)])[0]
    for rows in (
        rows_of(model, ["the film was great", "bad", "i loved it , not very boring at all", "a"]),
        [longest, longest[:70], longest[:5]],
    ):
        ids, attention = model.padded(rows)
        expected = unfused(ids, attention)
        assert np.abs(fused(ids, attention) - expected).max() <= 1e-5 * np.abs(expected).max()


def test_auto_runs_the_fused_graph_only_where_faster_and_remembers_the_decision(
    tiny: TextModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """auto: the fused graph runs where it is faster at both widths and by 5 % on their geometric
    mean; the decision is recorded beside it, and later starts read it without timing again."""
    from shared.runtime import fusion

    calls: list[int] = []

    def timed(unfused: tuple[float, float], fused: tuple[float, float]) -> Any:
        def per_row_ms(runners: Any, passes: dict[str, Any], rounds: int, repeats: int = 1) -> Any:
            calls.append(rounds)
            return {
                "unfused": dict(zip(passes, unfused, strict=True)),
                "fused": dict(zip(passes, fused, strict=True)),
            }

        return per_row_ms

    for case, unfused_ms, fused_ms, kept in (
        ("faster", (2.0, 30.0), (1.5, 25.0), True),
        ("4 % faster", (2.0, 30.0), (1.92, 28.85), False),
        ("faster at one width", (2.0, 30.0), (1.0, 31.0), False),
    ):
        monkeypatch.setattr(fusion, "per_row_ms", timed(unfused_ms, fused_ms))
        calls.clear()
        with caplog.at_level(logging.INFO):
            runner = onnx_exact(tiny, tmp_path / case, threads=1, fusion="auto")
        assert calls and (runner.fused is not None) == kept, case
        assert "made and measured" in caplog.text and "ms/row" in caplog.text
        (record,) = (tmp_path / case).glob("onnx/*-fused-*.json")
        assert json.loads(record.read_text())["verdict"] == ("faster" if kept else "slower")
        calls.clear()
        again = onnx_exact(tiny, tmp_path / case, threads=1, fusion="auto")
        assert not calls and again.path == runner.path, case
        if not kept:  # the graph that checked out is kept for ONNX_FUSION=on
            assert onnx_exact(tiny, tmp_path / case, threads=1, fusion="on").fused is not None


def test_onnx_fusion_off_makes_no_fused_graph(
    tiny: TextModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.errors import ConfigurationError

    monkeypatch.setenv("ONNX_FUSION", "off")  # what onnx_exact reads when its caller does not say
    runner = onnx_exact(tiny, tmp_path, threads=1)
    assert runner.fused is None and [p.name for p in (tmp_path / "onnx").iterdir()] == [runner.path.name]
    assert Settings.from_env({}).onnx_fusion == "auto"
    with pytest.raises(ConfigurationError, match="ONNX_FUSION"):
        Settings.from_env({"ONNX_FUSION": "yes"})


def test_a_fused_graph_whose_logits_move_is_refused(
    tiny: TextModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.runtime import fusion

    monkeypatch.setattr(fusion, "TOLERANCE", 0.0)  # any difference from the unfused logits refuses it
    runner = onnx_exact(tiny, tmp_path, threads=1, fusion="on")
    assert runner.fused is None and runner.path == runner.export
    (record,) = (tmp_path / "onnx").glob("*-fused-*.json")
    found = json.loads(record.read_text())
    assert found["difference"] > 0 and found["verdict"].startswith("refused: logits off by")
    assert not list((tmp_path / "onnx").glob("*-fused-*.onnx"))  # dropped: it will never run
