"""Dataset analyses: the aggregation (Clarify's layout, cohorts, normalised units, faithfulness),
drift by nDCG, and `clarion analyze` / `clarion compare` run for real on the tiny model."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.analysis.aggregate import MEDIAN_SAMPLE, AnalysisOptions, DatasetAnalysis, UnitStats, truth_label
from shared.analysis.drift import compare, ndcg, unit_name
from shared.analysis.units import Normalizer
from tests.support import REPO, base_env, interruptible, wait_until

LABELS = ["negative", "positive"]


def result(units: list[tuple[str, float]], positive: float, faithful: float | None = None) -> dict:
    """An API per-text body explained for both labels: positive's attribution is v, negative's -v."""
    spans, start = [], 0
    for unit, _ in units:
        spans.append([start, start + len(unit)])
        start += len(unit) + 1
    prediction = sorted(
        [{"label": "positive", "score": positive}, {"label": "negative", "score": 1 - positive}],
        key=lambda p: -p["score"],
    )
    body = {
        "prediction": prediction,
        "truncated": False,
        "model": "tiny",
        "explanation": [[unit, {"negative": -v, "positive": v}] for unit, v in units],
        "offsets": spans,
        "base_values": {"negative": 0.5, "positive": 0.5},
        "model_output": {"negative": 1 - positive, "positive": positive},
        "explanation_parameters": {"granularity": "word", "max_evals": 100, "evaluations": 40},
    }
    if faithful is not None:
        body["faithfulness"] = {
            label: {"comprehensiveness": faithful, "sufficiency": -faithful / 2} for label in LABELS
        }
    return body


def test_normalised_units_count_as_one() -> None:
    normal = Normalizer()
    assert {normal(u) for u in ("Film", "film", "film,", '"Film."', "FILM")} == {"film"}
    assert normal("!!!") == "!!!" and normal(",") == ","  # punctuation alone keeps its text
    assert normal("well-made") == "well-made" and normal("Don't") == "don't"
    assert Normalizer.parse("case")("Film,") == "film," and Normalizer.parse("punctuation")("Film,") == "Film"
    assert Normalizer.parse("none")("Film,") == "Film," and Normalizer.parse("none").spec == "none"
    with pytest.raises(ValueError, match="normalize"):
        Normalizer.parse("stemming")


def test_aggregations_are_claritys_and_the_median_is_exact_below_the_sample() -> None:
    rng, values = random.Random(1), np.random.default_rng(0).normal(size=300)
    stats = UnitStats()
    for v in values:
        stats.add(float(v), rng)
    assert stats.aggregate("mean_abs") == pytest.approx(np.abs(values).mean())
    assert stats.aggregate("mean_sq") == pytest.approx((values**2).mean())
    assert stats.aggregate("median") == pytest.approx(np.median(values))
    many = UnitStats()
    for v in np.random.default_rng(2).uniform(size=20 * MEDIAN_SAMPLE):
        many.add(float(v), rng)
    assert len(many.sample) == MEDIAN_SAMPLE and abs(many.aggregate("median") - 0.5) < 0.05


def test_true_labels_by_name_or_index() -> None:
    assert truth_label("POSITIVE", LABELS) == "positive" and truth_label(1, LABELS) == "positive"
    assert truth_label("0", LABELS) == "negative" and truth_label(" ", LABELS) is None
    assert truth_label("neutral", LABELS) == "neutral"  # not the model's: a prediction of it is wrong


def test_the_document_has_claritys_layout_cohorts_and_the_surest_errors() -> None:
    analysis = DatasetAnalysis(AnalysisOptions(top_k=3, text_field="review"))
    analysis.add(1, "Great film,", result([("Great", 0.4), ("film,", 0.1)], 0.9, 0.3), truth="positive")
    analysis.add(2, "dull Film", result([("dull", -0.5), ("Film", 0.05)], 0.2, 0.5), truth="1")
    analysis.add(3, "great FILM!", result([("great", 0.2), ("FILM!", 0.1)], 0.7, 0.1), truth="negative")
    analysis.add(4, "a film", result([("a", 0.0), ("film", 0.2)], 0.99), truth="negative")
    analysis.skip()
    document = analysis.document(input="reviews.jsonl")
    assert document["version"] == "1.0"
    clarify = document["explanations"]["kernel_shap"]
    assert list(clarify) == ["negative", "positive"]
    top = clarify["positive"]["global_top_shap_text"]["review"]
    assert top == {"dull": 0.5, "great": 0.3, "film": pytest.approx(0.1125)}  # mean_abs, normalised units
    assert clarify["positive"]["expected_value"] == 0.5
    # the text feature's own value: each text's summed attribution, mean |.|: (.5 + .45 + .3 + .2) / 4
    assert clarify["positive"]["global_shap_values"] == {"review": pytest.approx(0.3625)}
    extra = document["clarion"]
    assert extra["texts"] == 4 and extra["skipped"] == 1 and extra["input"] == "reviews.jsonl"
    assert extra["accuracy"] == 0.25 and extra["confusion"]["negative"] == {"positive": 2}
    cohorts = extra["cohorts"]
    assert list(cohorts) == ["all", "predicted:negative", "predicted:positive", "correct", "wrong"]
    assert [cohorts[name]["texts"] for name in cohorts] == [4, 1, 3, 1, 3]
    positive = cohorts["all"]["labels"]["positive"]
    assert [e["unit"] for e in positive["top_positive"]] == ["great", "film"]
    assert positive["top_positive"][1] == {
        "unit": "film", "value": pytest.approx(0.1125), "mean": pytest.approx(0.1125),
        "mean_abs": pytest.approx(0.1125), "count": 4,
    }  # fmt: skip
    assert [e["unit"] for e in positive["top_negative"]] == ["dull"]
    # faithfulness: texts 1-3 measured, the 4th not; the predicted label's measures per cohort
    assert positive["faithfulness"] == {"comprehensiveness": 0.3, "sufficiency": -0.15, "texts": 3}
    assert cohorts["wrong"]["faithfulness"] == {"comprehensiveness": 0.3, "sufficiency": -0.15, "texts": 2}
    # the errors the model was surest of, surest first (text 2 was right: "1" is positive... no: 0.2)
    assert [e["line"] for e in extra["worst_errors"]] == [4, 2, 3]
    assert (
        extra["worst_errors"][0]["true_label"] == "negative" and extra["worst_errors"][0]["text"] == "a film"
    )


def test_a_text_pairs_units_stay_apart_from_the_same_words_of_its_text() -> None:
    """pair_field: the text_pair's "film" is not the text's "film"; each text is a text feature."""
    analysis = DatasetAnalysis(AnalysisOptions(text_field="premise", pair_field="hypothesis"))
    body = result([("a", 0.1), ("film", 0.4), ("the", 0.0), ("Film", -0.2)], 0.8)
    body["offsets"] = [[0, 1], [2, 6], [0, 3], [4, 8]]  # each unit indexes into its own text
    body["segments"] = [0, 0, 1, 1]
    analysis.add(1, "a film", body, truth="negative", text_pair="the Film")
    document = analysis.document()
    positive = document["explanations"]["kernel_shap"]["positive"]
    assert positive["global_top_shap_text"] == {
        "premise": {"film": 0.4, "a": 0.1}, "hypothesis": {"film": 0.2, "the": 0.0}
    }  # fmt: skip
    assert positive["global_shap_values"] == {"premise": pytest.approx(0.5), "hypothesis": pytest.approx(0.2)}
    top = document["clarion"]["cohorts"]["all"]["labels"]["positive"]["top"]
    assert [(e["unit"], e["segment"], e["mean"]) for e in top[:2]] == [("film", 0, 0.4), ("film", 1, -0.2)]
    assert document["clarion"]["options"]["pair_field"] == "hypothesis"
    assert document["clarion"]["worst_errors"][0]["text_pair"] == "the Film"
    with pytest.raises(ValueError, match="text's own"):
        AnalysisOptions(text_field="premise", pair_field="premise")


def test_ndcg_is_claritys() -> None:
    baseline = {"SAT": 0.70, "GPA": 0.50, "rank": 0.05}  # the docs' worked example: 0.69
    assert ndcg(baseline, {"rank": 0.7, "GPA": 0.5, "SAT": 0.05}, 3) == pytest.approx(0.6876, abs=1e-4)
    assert ndcg(baseline, dict(baseline), 3) == 1.0
    assert ndcg(baseline, {"other": 1.0}, 3) == 0.0


def test_ndcg_of_an_analysis_with_itself_is_one_whatever_the_signs() -> None:
    negative = {"dull": -0.1, "boring": -0.2, "awful": -0.5}  # a median can be negative throughout
    zero = {"the": 0.0, "a": 0.0, "film": 0.0}
    mixed = {"great": 0.3, "plot": 0.0, "dull": -0.4}
    for top in (negative, zero, mixed):
        assert ndcg(top, dict(top), 3) == pytest.approx(1.0)
    reversed_negative = {"awful": -0.1, "boring": -0.2, "dull": -0.5}
    assert ndcg(negative, reversed_negative, 3) < 0.9
    assert ndcg(mixed, {"dull": 0.3, "plot": 0.0, "great": -0.4}, 3) < 0.9
    # equal values rank nothing: swapping them keeps 1.0, losing them to other units does not
    assert ndcg(zero, {"film": 0.0, "a": 0.0, "the": 0.0}, 3) == pytest.approx(1.0)
    assert ndcg(zero, {"the": 0.0, "plot": 0.0, "dull": 0.0}, 3) == pytest.approx(
        1 / (1 + 1 / math.log2(3) + 0.5)
    )
    assert ndcg(zero, {"other": 0.0}, 3) == 0.0


def test_ndcg_of_empty_top_lists_is_defined() -> None:
    assert ndcg({}, {}, 3) == 1.0
    assert ndcg({}, {"good": 0.4}, 3) == 0.0
    assert ndcg({"good": 0.4}, {}, 3) == 0.0
    assert ndcg({"good": 0.4}, {"good": 0.4}, 0) == 1.0


def analysis_of(top: dict[str, float]) -> dict:
    return {"explanations": {"kernel_shap": {"positive": {"global_top_shap_text": {"text": top}}}}}


def test_compare_flags_a_known_shift_and_lists_what_moved() -> None:
    baseline = analysis_of({"great": 0.5, "superb": 0.4, "dull": 0.3, "plot": 0.1})
    same = compare(baseline, analysis_of({"great": 0.45, "superb": 0.41, "dull": 0.2, "plot": 0.1}))
    assert same["labels"]["positive"]["ndcg"] == 1.0 and not same["drifted"] and same["violations"] == []
    shifted = compare(baseline, analysis_of({"plot": 0.9, "actor": 0.5, "great": 0.1}), top_k=4)
    result = shifted["labels"]["positive"]
    assert result["ndcg"] < 0.9 and result["drifted"] and shifted["drifted"]
    assert result["moved"][0]["unit"] in {"plot", "superb", "dull", "actor"}
    moved = {m["unit"]: m for m in result["moved"]}
    assert moved["plot"]["baseline_rank"] == 4 and moved["plot"]["current_rank"] == 1
    assert moved["actor"]["baseline_rank"] is None and moved["actor"]["current_rank"] == 2
    assert shifted["violations"][0]["constraint_check_type"] == "feature_attribution_drift_check"


def test_a_pair_analysis_compares_the_units_of_both_texts_apart() -> None:
    """A pair analysis has two text features: "music" of the premise and of the hypothesis are two
    units, ranked together, and a moved unit names its text."""

    def pair(premise: dict[str, float], hypothesis: dict[str, float]) -> dict:
        top = {"premise": premise, "hypothesis": hypothesis}
        return {"explanations": {"kernel_shap": {"entailment": {"global_top_shap_text": top}}}}

    baseline = pair({"music": 0.5, "guitar": 0.2}, {"music": 0.4, "sky": 0.1})
    assert compare(baseline, baseline)["labels"]["entailment"]["ndcg"] == 1.0
    # the same words, the two texts' "music" swapped: only the hypothesis one rose
    swapped = compare(baseline, pair({"music": 0.4, "guitar": 0.2}, {"music": 0.5, "sky": 0.1}), top_k=4)
    assert swapped["text_features"] == ["premise", "hypothesis"]
    moved = {(m["segment"], m["unit"]): m for m in swapped["labels"]["entailment"]["moved"]}
    assert set(moved) == {(0, "music"), (1, "music")}
    assert moved[(1, "music")]["baseline_rank"] == 2 and moved[(1, "music")]["current_rank"] == 1
    assert unit_name(swapped, moved[(1, "music")]) == "hypothesis:music"
    single = compare(analysis_of({"a": 1.0}), analysis_of({"a": 0.5, "b": 0.9}))
    assert unit_name(single, single["labels"]["positive"]["moved"][0]) in {"a", "b"}


# ---- the commands, for real ----------------------------------------------------------------------

REVIEWS = [
    ("i loved this film , the acting was superb .", "positive"),
    ("one long string of cliches .", "negative"),
    ("a dull , lifeless plot with no humor .", "negative"),
    ("the story is thin but the actors are good .", "neutral"),
    ("boring", "negative"),
]


def clarion(*args: str, model_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=REPO,
        env=base_env(MODEL_DIR=str(model_dir), TORCH_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("analysis") / "reviews.jsonl"
    rows = [{"review": text, "gold": label} for text, label in REVIEWS * 40]  # 200 lines
    rows[6] = {"review": "", "gold": "negative"}  # a bad line: reported, skipped, counted
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_same_analysis(got: object, expected: object, path: str = "") -> None:
    """Equal up to float noise: a run's exact passes move from torch to onnxruntime when its export
    is ready (1e-7 on a logit), so units that tie may swap places in a ranked list: lists of units
    are compared by unit."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key in expected:
            assert_same_analysis(got[key], expected[key], f"{path}/{key}")
    elif (
        isinstance(expected, list) and expected and all(isinstance(e, dict) and "unit" in e for e in expected)
    ):
        assert_same_analysis({e["unit"]: e for e in got}, {e["unit"]: e for e in expected}, path)
    elif (
        isinstance(expected, list) and expected and all(isinstance(e, dict) and "line" in e for e in expected)
    ):
        # Worst errors: a review repeated on 40 lines scores the same up to float noise, which picks
        # the lines among equals; the texts and their numbers are what must agree.
        def by_text(entries: list) -> list:
            return sorted(
                ({k: v for k, v in e.items() if k != "line"} for e in entries), key=lambda e: e["text"]
            )

        assert isinstance(got, list) and len(got) == len(expected), path
        assert_same_analysis(by_text(got), by_text(expected), path)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same_analysis(g, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-7), path
    else:
        assert got == expected, path


def test_analyze_resumes_after_an_interrupt_to_the_same_analysis(
    dataset: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    options = ["--text-field", "review", "--label-field", "gold", "--max-evals", "60", "--chunk", "1"]
    whole = tmp_path / "whole"
    code, _, err = finished(
        clarion("analyze", str(dataset), "--out", str(whole), *options, model_dir=tiny_model_dir)
    )
    assert code == 0, err
    for name in ("analysis.json", "records.jsonl", "report.html"):
        assert (whole / name).is_file()

    resumed = tmp_path / "resumed"
    first = clarion("analyze", str(dataset), "--out", str(resumed), *options, model_dir=tiny_model_dir)
    records = resumed / "records.jsonl"
    wait_until(
        lambda: records.exists() and len(records.read_text().splitlines()) >= 10, 180, 0.02, "10 records"
    )
    first.send_signal(signal.SIGINT)  # Ctrl-C mid-run
    code, _, err = finished(first)
    assert len(records.read_text().splitlines()) < 200  # it was interrupted while explaining
    assert code == 130 and "rerun to resume" in err and not (resumed / "analysis.json").exists()
    code, _, err = finished(
        clarion("analyze", str(dataset), "--out", str(resumed), *options, model_dir=tiny_model_dir)
    )
    assert code == 0 and "resuming with" in err, err

    document = json.loads((whole / "analysis.json").read_text())
    assert_same_analysis(json.loads((resumed / "analysis.json").read_text()), document)
    extra = document["clarion"]
    assert extra["texts"] == 199 and extra["skipped"] == 1 and extra["texts_with_true_label"] == 199
    assert extra["options"]["text_field"] == "review"
    assert set(document["explanations"]["kernel_shap"]) == {"negative", "neutral", "positive"}
    top = document["explanations"]["kernel_shap"]["positive"]["global_top_shap_text"]["review"]
    assert set(top) <= {w for text, _ in REVIEWS for w in text.split() if w not in {",", "."}} | {",", "."}
    assert extra["cohorts"]["all"]["faithfulness"]["texts"] == 199  # faithfulness is on by default
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert sorted(r["line"] for r in lines) == list(range(1, 201))  # every line once, none lost
    assert {r.get("true_label") for r in lines if "prediction" in r} == {"positive", "negative", "neutral"}


def test_compare_passes_a_rerun_and_fails_a_shifted_dataset(
    dataset: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    shifted = tmp_path / "shifted.jsonl"
    shifted.write_text(
        "".join(json.dumps({"review": f"zebra quartz {i} volcano umbrella"}) + "\n" for i in range(12))
    )
    runs = {}
    for name, source in (("a", dataset), ("b", dataset), ("c", shifted)):
        runs[name] = tmp_path / name
        code, _, err = finished(
            clarion(
                "analyze", str(source), "--out", str(runs[name]), "--text-field", "review",
                "--max-evals", "40", "--no-faithfulness", model_dir=tiny_model_dir,
            )
        )  # fmt: skip
        assert code == 0, err
    code, out, _ = finished(clarion("compare", str(runs["a"]), str(runs["b"]), model_dir=tiny_model_dir))
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(rows) == 3 and all(r[2] == "ok" and float(r[1][5:]) > 0.99 for r in rows), out
    report = tmp_path / "drift.json"
    code, out, _ = finished(
        clarion(
            "compare",
            str(runs["a"]),
            str(runs["c"] / "analysis.json"),
            "--json",
            str(report),
            model_dir=tiny_model_dir,
        )
    )
    assert code == 1 and "DRIFT" in out
    comparison = json.loads(report.read_text())
    assert comparison["drifted"] and all(r["ndcg"] < 0.9 for r in comparison["labels"].values())
    code, _, err = finished(
        clarion("compare", str(runs["a"]), str(tmp_path / "nothing"), model_dir=tiny_model_dir)
    )
    assert code == 2 and "no such analysis" in err
