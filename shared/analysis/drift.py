"""Attribution drift between two analyses, as SageMaker Clarify's model monitor measures it.

Per label, the current top-k units are scored by nDCG against the baseline's: with F the baseline's
units in its order and F' the current ones in theirs, both cut at k, and a(f) a unit's gain,

    nDCG = sum_i a(F'_i) / log2(i + 1)  /  sum_i a(F_i) / log2(i + 1)      (i = 1..k)

1.0 when the current ranking puts the baseline's top units in the baseline's order; Clarify raises
an alert below 0.9. A unit's gain is its baseline attribution less the floor min(0, the lowest in F)
for the units the baseline's analysis lists (its top k and beyond), 0 for others: Clarify's own
gains when the baseline's values are all 0 or above (as mean |SHAP| always is), and still a ranking
when a median is negative. When every gain is 0 (the baseline's values all equal and at most 0),
each unit of F gains 1: only which units stay counts. So the score is in [0, 1], and an analysis
against itself scores 1.0. Both sides are read from `global_top_shap_text`, so a Clarify
`analysis.json` compares too.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_THRESHOLD = 0.9
MOVED = 10  # units listed per label as those that moved most


Unit = tuple[int, str]  # (its text feature's index, the unit): a pair's texts keep the same word apart


def top_units(document: dict[str, Any], label: str) -> dict[Unit, float]:
    """A label's top units and values, in the document's order, each text feature's (a pair
    analysis has two: its units rank together, the same word in each text as two units)."""
    per_feature = document["explanations"]["kernel_shap"][label].get("global_top_shap_text") or {}
    return {
        (i, unit): value for i, values in enumerate(per_feature.values()) for unit, value in values.items()
    }


def text_features(document: dict[str, Any]) -> list[str]:
    """The analysis's text features by index (Clarify names them; a pair analysis has two)."""
    for entry in document["explanations"]["kernel_shap"].values():
        if entry.get("global_top_shap_text"):
            return list(entry["global_top_shap_text"])
    return []


def ndcg(baseline: dict[Any, float], current: dict[Any, float], k: int) -> float:
    """The current top k's nDCG against the baseline's (the module's docstring has the gains); 1.0
    when both lists are empty, 0.0 when only one is."""
    ideal = _ranked(baseline, k)
    ranked = _ranked(current, k)
    if not ideal or not ranked:
        return 0.0 if ideal or ranked else 1.0
    floor = min(0.0, baseline[ideal[-1]])
    gain = {unit: max(0.0, value - floor) for unit, value in baseline.items()}
    if not any(gain[unit] for unit in ideal):  # equal values: nothing to rank, only membership
        gain = dict.fromkeys(ideal, 1.0)
    ideal_gain = sum(gain[unit] / math.log2(i + 2) for i, unit in enumerate(ideal))
    return sum(gain.get(unit, 0.0) / math.log2(i + 2) for i, unit in enumerate(ranked)) / ideal_gain


def _ranked(values: dict[Any, float], k: int) -> list[Any]:
    """The top k units, highest value first (ties keep the document's order)."""
    return sorted(values, key=lambda unit: -values[unit])[:k]


def moved(baseline: dict[Unit, float], current: dict[Unit, float], k: int) -> list[dict[str, Any]]:
    """The units whose rank changed most (a unit outside a top list ranks k + 1 there), each with
    its text feature's index (`segment`)."""
    base_rank = {u: i + 1 for i, u in enumerate(sorted(baseline, key=lambda u: -baseline[u])[:k])}
    now_rank = {u: i + 1 for i, u in enumerate(sorted(current, key=lambda u: -current[u])[:k])}
    entries = []
    for unit in base_rank.keys() | now_rank.keys():
        before, after = base_rank.get(unit), now_rank.get(unit)
        shift = (after or k + 1) - (before or k + 1)
        if shift:
            entries.append(
                {
                    "unit": unit[1],
                    "segment": unit[0],
                    "baseline_rank": before,
                    "current_rank": after,
                    "baseline_value": baseline.get(unit),
                    "current_value": current.get(unit),
                    "rank_change": shift,
                }
            )
    entries.sort(key=lambda e: (-abs(e["rank_change"]), e["segment"], e["unit"]))
    return entries[:MOVED]


def compare(
    baseline: dict[str, Any], current: dict[str, Any], top_k: int = 50, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
    """Per label shared by both analyses: nDCG, whether it drifted, and the units that moved most;
    labels only one analysis has are listed as such. Clarify's `violations` follow."""
    base_labels = list(baseline["explanations"]["kernel_shap"])
    now_labels = list(current["explanations"]["kernel_shap"])
    labels = {}
    violations = []
    for label in [label for label in base_labels if label in now_labels]:
        before, after = top_units(baseline, label), top_units(current, label)
        score = ndcg(before, after, top_k)
        labels[label] = {
            "ndcg": round(score, 6),
            "drifted": score < threshold,
            "moved": moved(before, after, top_k),
        }
        if score < threshold:
            violations.append(
                {
                    "label": label,
                    "metric_name": "shap",
                    "constraint_check_type": "feature_attribution_drift_check",
                    "description": f"Feature attribution drift {score:.4f} is below threshold {threshold}",
                }
            )
    return {
        "top_k": top_k,
        "threshold": threshold,
        "text_features": text_features(current) or text_features(baseline),
        "drifted": bool(violations),
        "labels": labels,
        "only_in_baseline": [label for label in base_labels if label not in now_labels],
        "only_in_current": [label for label in now_labels if label not in base_labels],
        "violations": violations,
    }


def unit_name(comparison: dict[str, Any], entry: dict[str, Any]) -> str:
    """A moved unit as people read it: "premise:music" when the analyses have two texts."""
    features = comparison.get("text_features") or []
    return f"{features[entry['segment']]}:{entry['unit']}" if len(features) > 1 else entry["unit"]
