"""A dataset's explanation: every text's attributions folded into global ones, per label and cohort.

Texts stream through `DatasetAnalysis.add` one at a time, in input order. Per unit, label and cohort
only sums and a sample of at most MEDIAN_SAMPLE values (for the median; kept whatever the method) are
kept, besides the few surest errors whole, so memory grows with the number of distinct units (times
labels and cohorts), not with the number of texts. `document()` is `analysis.json`: SageMaker
Clarify's layout for a text feature (`explanations.kernel_shap.<label>.global_top_shap_text`), and
Clarion's extras under `clarion` (docs/analysis.md). Text pairs are two text features: a unit of the
text_pair never merges with the same word of the text (a unit's key holds its segment).
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.analysis.units import Normalizer

AGG_METHODS = ("mean_abs", "mean_sq", "median")
ANALYSIS_VERSION = 1
# A unit's median is taken over a uniform sample of at most this many of its occurrences (reservoir
# sampling, seeded: the same input gives the same analysis). Exact below it.
MEDIAN_SAMPLE = 1000
ALL = "all"
CORRECT, WRONG = "correct", "wrong"
TEXT, TEXT_PAIR = 0, 1  # a unit's segment, as explanations' `segments` say: the text or the text_pair
Key = tuple[int, str]  # a unit across the dataset: its segment and its normalised text
Units = list[tuple[Key, dict[str, float]]]  # a text's units and their {label: attribution}


def predicted_cohort(label: str) -> str:
    return f"predicted:{label}"


class UnitStats:
    """One unit's attributions to one label in one cohort."""

    __slots__ = ("count", "sample", "total", "total_abs", "total_sq")

    def __init__(self) -> None:
        self.count = 0
        self.total = self.total_abs = self.total_sq = 0.0
        self.sample: list[float] = []

    def add(self, value: float, rng: random.Random) -> None:
        self.count += 1
        self.total += value
        self.total_abs += abs(value)
        self.total_sq += value * value
        if len(self.sample) < MEDIAN_SAMPLE:
            self.sample.append(value)
        else:
            slot = rng.randrange(self.count)
            if slot < MEDIAN_SAMPLE:
                self.sample[slot] = value

    def aggregate(self, method: str) -> float:
        if method == "mean_abs":
            return self.total_abs / self.count
        if method == "mean_sq":
            return self.total_sq / self.count
        return float(np.median(self.sample))

    def summary(self, unit: str, method: str) -> dict[str, Any]:
        return {
            "unit": unit,
            "value": _round(self.aggregate(method)),
            "mean": _round(self.total / self.count),
            "mean_abs": _round(self.total_abs / self.count),
            "count": self.count,
        }


@dataclass
class LabelStats:
    """One label's attributions in one cohort: per unit, per text, and its faithfulness."""

    units: dict[Key, UnitStats] = field(default_factory=lambda: defaultdict(UnitStats))
    # Each text's summed attribution, per segment (a pair's two texts are two text features).
    text_totals: dict[int, UnitStats] = field(default_factory=lambda: defaultdict(UnitStats))
    base_total: float = 0.0
    texts: int = 0
    faithfulness: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    faithful_texts: int = 0


@dataclass
class Cohort:
    texts: int = 0
    labels: dict[str, LabelStats] = field(default_factory=lambda: defaultdict(LabelStats))
    # Each text's measures for its predicted label (ERASER's setting: the decision being explained).
    predicted_faithfulness: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    predicted_faithful_texts: int = 0


@dataclass(frozen=True)
class AnalysisOptions:
    agg_method: str = "mean_abs"
    top_k: int = 50  # Clarify's max_top_tokens
    normalizer: Normalizer = field(default_factory=Normalizer)
    text_field: str = "text"
    pair_field: str | None = None  # text pairs: the second text's field or column
    worst_errors: int = 10

    def __post_init__(self) -> None:
        if self.agg_method not in AGG_METHODS:
            raise ValueError(f"agg_method: {self.agg_method!r}; use one of {AGG_METHODS}")
        if self.top_k < 1:
            raise ValueError("top_k: at least 1")
        if self.pair_field is not None and self.pair_field == self.text_field:
            raise ValueError(f"pair_field: {self.pair_field!r} is the text's own field (text_field)")

    @property
    def features(self) -> dict[int, str]:
        """Each segment's text feature, named by its field: the text's, and a pair's second."""
        if self.pair_field is None:
            return {TEXT: self.text_field}
        return {TEXT: self.text_field, TEXT_PAIR: self.pair_field}


class DatasetAnalysis:
    """Folds texts' results (the API's per-text bodies, explained) into the dataset's analysis."""

    def __init__(self, options: AnalysisOptions) -> None:
        self.options = options
        self.cohorts: dict[str, Cohort] = defaultdict(Cohort)
        self.labels: list[str] = []
        self.parameters: dict[str, Any] = {}
        self.model: str | None = None
        self.skipped = 0
        self.with_truth = 0
        self.confusion: dict[str, Counter[str]] = defaultdict(Counter)
        self._worst: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap of the surest errors
        self._rng = random.Random(0)

    def skip(self) -> None:
        """A line that could not be explained (counted, not analyzed)."""
        self.skipped += 1

    def add(
        self, line: int, text: str, result: dict[str, Any], truth: Any = None, text_pair: str | None = None
    ) -> None:
        prediction = result["prediction"]
        predicted = prediction[0]["label"]
        if not self.labels:
            # The model's order: explaining "all" labels lists them in it (a true label may be an index).
            explained = list(result.get("base_values") or {})
            self.labels = explained + sorted(p["label"] for p in prediction if p["label"] not in explained)
            self.model = result.get("model")
            self.parameters = dict(result.get("explanation_parameters") or {})
        cohorts = [ALL, predicted_cohort(predicted)]
        true_label = truth_label(truth, self.labels)
        if true_label is not None:
            self.with_truth += 1
            self.confusion[true_label][predicted] += 1
            cohorts.append(CORRECT if true_label == predicted else WRONG)
            if true_label != predicted:
                self._keep_error(line, text, text_pair, result, true_label)
        units = self._units(result)
        for name in cohorts:
            self._add_to(self.cohorts[name], units, result)

    def _units(self, result: dict[str, Any]) -> Units:
        """The explained units that are text (a token granularity's boundary tokens and stand-alone
        space markers have an empty span), normalised, each keyed with its segment (a pair's)."""
        spans = result.get("offsets") or []
        explained = result.get("explanation") or []
        segments = result.get("segments") or [TEXT] * len(explained)
        return [
            ((segment, self.options.normalizer(unit)), values)
            for (unit, values), (start, end), segment in zip(explained, spans, segments, strict=True)
            if end > start and unit.strip()
        ]

    def _add_to(self, cohort: Cohort, units: Units, result: dict[str, Any]) -> None:
        cohort.texts += 1
        faithfulness = result.get("faithfulness") or {}
        predicted = faithfulness.get(result["prediction"][0]["label"])
        if predicted:
            cohort.predicted_faithful_texts += 1
            for name, value in predicted.items():
                cohort.predicted_faithfulness[name] += value
        for label, base in (result.get("base_values") or {}).items():
            stats = cohort.labels[label]
            stats.texts += 1
            stats.base_total += base
            totals = dict.fromkeys(self.options.features, 0.0)
            for key, values in units:
                value = values[label]
                totals[key[0]] = totals.get(key[0], 0.0) + value
                stats.units[key].add(value, self._rng)
            for segment, total in totals.items():
                stats.text_totals[segment].add(total, self._rng)
            measures = faithfulness.get(label)
            if measures:
                stats.faithful_texts += 1
                for name, value in measures.items():
                    stats.faithfulness[name] += value

    def _keep_error(
        self, line: int, text: str, text_pair: str | None, result: dict[str, Any], true_label: str
    ) -> None:
        pair = {} if text_pair is None else {"text_pair": text_pair}
        entry = {"line": line, "text": text, **pair, "true_label": true_label, "result": result}
        item = (result["prediction"][0]["score"], -line, entry)
        if len(self._worst) < self.options.worst_errors:
            heapq.heappush(self._worst, item)
        elif item[:2] > self._worst[0][:2]:
            heapq.heapreplace(self._worst, item)

    # ---- the document ---------------------------------------------------------------------------

    def document(self, **extra: Any) -> dict[str, Any]:
        """analysis.json: Clarify's layout, then Clarion's extras (`extra` joins them: the input, the
        run's options)."""
        options = self.options
        everything = self.cohorts.get(ALL, Cohort())
        kernel_shap = {}
        for label in self.labels:
            stats = everything.labels.get(label)
            if stats is None or not stats.texts:
                continue
            ranked = self._ranked(stats, "value")
            features = options.features.items()
            kernel_shap[label] = {
                # Each text feature's own global value: each text's summed attribution, aggregated.
                "global_shap_values": {
                    name: _round(stats.text_totals[segment].aggregate(options.agg_method))
                    for segment, name in features
                },
                "expected_value": _round(stats.base_total / stats.texts),
                "global_top_shap_text": {
                    name: {e["unit"]: e["value"] for e in _of_segment(ranked, segment)[: options.top_k]}
                    for segment, name in features
                },
            }
        truths = sum(self.confusion.values(), Counter())
        correct = sum(self.confusion[label][label] for label in self.confusion)
        worst = sorted(self._worst, reverse=True)
        return {
            "version": "1.0",
            "explanations": {"kernel_shap": kernel_shap},
            "clarion": {
                "analysis_version": ANALYSIS_VERSION,
                "model": self.model,
                "labels": self.labels,
                "texts": everything.texts,
                "skipped": self.skipped,
                "options": {
                    "agg_method": options.agg_method,
                    "top_k": options.top_k,
                    "normalize": options.normalizer.spec,
                    "text_field": options.text_field,
                    **({"pair_field": options.pair_field} if options.pair_field is not None else {}),
                },
                "explanation_parameters": {
                    k: v for k, v in self.parameters.items() if k not in ("evaluations", "windows")
                },
                **extra,
                "accuracy": _round(correct / self.with_truth) if self.with_truth else None,
                "texts_with_true_label": self.with_truth,
                "confusion": {t: dict(p) for t, p in sorted(self.confusion.items())} if truths else {},
                "cohorts": {name: self._cohort(cohort) for name, cohort in self._ordered_cohorts()},
                "worst_errors": [entry for _, _, entry in worst],
            },
        }

    def _ordered_cohorts(self) -> list[tuple[str, Cohort]]:
        names = [ALL, *(predicted_cohort(label) for label in self.labels), CORRECT, WRONG]
        return [(name, self.cohorts[name]) for name in names if name in self.cohorts]

    def _cohort(self, cohort: Cohort) -> dict[str, Any]:
        top_k = self.options.top_k
        labels = {}
        for label in self.labels:
            stats = cohort.labels.get(label)
            if stats is None or not stats.texts:
                continue
            by_mean = self._ranked(stats, "mean")
            labels[label] = {
                "texts": stats.texts,
                "expected_value": _round(stats.base_total / stats.texts),
                "top": self._ranked(stats, "value")[:top_k],
                "top_positive": [e for e in by_mean if e["mean"] > 0][:top_k],
                "top_negative": [e for e in reversed(by_mean) if e["mean"] < 0][:top_k],
                "faithfulness": _means(stats.faithfulness, stats.faithful_texts),
            }
        return {
            "texts": cohort.texts,
            "faithfulness": _means(cohort.predicted_faithfulness, cohort.predicted_faithful_texts),
            "labels": labels,
        }

    def _ranked(self, stats: LabelStats, key: str) -> list[dict[str, Any]]:
        """Units by `key` (their aggregate or signed mean), highest first; ties by count, then name.
        A pair's units say their segment (0: the text, 1: the text_pair)."""
        pairs = self.options.pair_field is not None
        entries = [
            s.summary(unit, self.options.agg_method) | ({"segment": segment} if pairs else {})
            for (segment, unit), s in stats.units.items()
        ]
        return sorted(entries, key=lambda e: (-e[key], -e["count"], e["unit"], e.get("segment", 0)))


def analyze_records(lines: Iterable[bytes | str], options: AnalysisOptions) -> DatasetAnalysis:
    """Fold JSON Lines records (as `clarion explain` writes them) into an analysis, in their order."""
    analysis = DatasetAnalysis(options)
    for raw in lines:
        if not raw.strip():
            continue
        record = json.loads(raw)
        if "error" in record or "prediction" not in record:
            analysis.skip()
            continue
        result = {k: v for k, v in record.items() if k not in ("line", "text", "text_pair", "true_label")}
        analysis.add(
            record["line"], record["text"], result, record.get("true_label"), record.get("text_pair")
        )
    return analysis


def _of_segment(entries: list[dict[str, Any]], segment: int) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("segment", TEXT) == segment]


def truth_label(value: Any, labels: list[str]) -> str | None:
    """A true label as the model names it: its name (any case), or its index ("1", 1)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    text = str(value).strip()
    by_name = {label.casefold(): label for label in labels}
    if text.casefold() in by_name:
        return by_name[text.casefold()]
    if text.isdigit() and int(text) < len(labels):
        return labels[int(text)]
    return text  # a label the model does not have: every prediction of it is wrong


def _means(totals: dict[str, float], texts: int) -> dict[str, Any] | None:
    """Mean measures over `texts` (with their count), or None when no text had them."""
    if not texts:
        return None
    return {name: _round(total / texts) for name, total in totals.items()} | {"texts": texts}


def _round(value: float) -> float:
    return float(f"{value:.6g}") if math.isfinite(value) else value
