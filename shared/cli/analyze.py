"""`clarion analyze INPUT --out DIR` and `clarion compare A B`: a dataset's explanation, and its drift.

`analyze` explains every text of INPUT (exactly as `clarion explain` does, into DIR/records.jsonl,
resumable line by line), then folds the records into DIR/analysis.json (shared/analysis/) and draws
DIR/report.html. `compare` scores the attribution drift between two analyses (nDCG per label, as
Clarify's model monitor does) and exits 1 when a label drifts below the threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.analysis.aggregate import AGG_METHODS, AnalysisOptions, analyze_records
from shared.analysis.drift import DEFAULT_THRESHOLD, compare, unit_name
from shared.analysis.units import Normalizer
from shared.cli.explain import (
    add_explanation_options,
    check_pairs,
    explain_into,
    explanation_parameters,
    read_lines,
    report,
)
from shared.errors import ClarionError
from shared.io.inputs import zero_shot_fields
from shared.settings import Settings

EXIT_DRIFT = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help=".jsonl, .csv, .tsv or .txt (a text per line)")
    parser.add_argument("--out", type=Path, required=True, help="the analysis folder; resumed if it exists")
    parser.add_argument("--text-field", default="text", help="the text's field (.jsonl) or column (.csv)")
    parser.add_argument("--label-field", help="the true label's field or column (a name or an index)")
    parser.add_argument(
        "--pair-field",
        metavar="NAME",
        help="text pairs (NLI, cross-encoders): each record's second text, a .jsonl field or .csv column",
    )
    parser.add_argument("--delimiter", default=",", help="a .csv input's delimiter (a .tsv: tab)")
    parser.add_argument("--agg-method", choices=list(AGG_METHODS), default="mean_abs")
    parser.add_argument(
        "--top-k", type=int, default=50, help="top units per label (Clarify's max_top_tokens)"
    )
    parser.add_argument(
        "--normalize", default="case,punctuation", help='"case", "punctuation", both (default) or "none"'
    )
    parser.add_argument("--no-faithfulness", action="store_true", help="skip the faithfulness measures")
    parser.add_argument("--baseline", type=Path, help="an earlier analysis: the report shows the drift")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="nDCG drift threshold")
    add_explanation_options(parser)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", type=Path, help="the baseline analysis (its folder or analysis.json)")
    parser.add_argument("current", type=Path, help="the analysis to compare with it")
    parser.add_argument("--top-k", type=int, default=50, help="units ranked per label")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="drift below this nDCG")
    parser.add_argument("--json", type=Path, help="also write the comparison here")


def analysis_options(args: argparse.Namespace) -> AnalysisOptions:
    try:
        return AnalysisOptions(
            agg_method=args.agg_method,
            top_k=args.top_k,
            normalizer=Normalizer.parse(args.normalize),
            text_field=args.text_field,
            pair_field=args.pair_field,
        )
    except ValueError as exc:
        raise ClarionError(str(exc)) from None


def load_analysis(path: Path) -> dict[str, Any]:
    file = path / "analysis.json" if path.is_dir() else path
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(document["explanations"]["kernel_shap"], dict):
            raise TypeError("explanations.kernel_shap is not an object")
    except FileNotFoundError:
        raise ClarionError(f"{file}: no such analysis") from None
    except (ValueError, KeyError, TypeError):
        raise ClarionError(f"{file}: not an analysis.json (no explanations.kernel_shap)") from None
    return document


def write_atomically(path: Path, content: str) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(content, encoding="utf-8")
    partial.replace(path)


def main(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return _analyze(args, settings)
    except KeyboardInterrupt:  # past the explaining (which reports its own): nothing half-written
        report(f"interrupted: rerun to resume from {args.out / 'records.jsonl'}")
        return 130


def _analyze(args: argparse.Namespace, settings: Settings) -> int:
    options = analysis_options(args)
    # Faithfulness is measured on single texts: a pair or zero-shot analysis goes without it.
    faithfulness = not args.no_faithfulness and args.pair_field is None and args.candidate_labels is None
    parameters = explanation_parameters(args, settings, faithfulness)
    if args.pair_field is not None:
        check_pairs(args, parameters, settings)
    baseline = load_analysis(args.baseline) if args.baseline else None
    if not args.input.is_file():
        raise ClarionError(f"{args.input}: no such file")
    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / "records.jsonl"
    lines = read_lines(
        args.input, args.text_field, args.text_field, args.label_field, args.delimiter, args.pair_field
    )
    interrupted = explain_into(args, settings, parameters, lines, records)
    if interrupted is not None:
        return interrupted
    from tqdm import tqdm

    with records.open("rb") as handle:
        analysis = analyze_records(tqdm(handle, desc="analyzing", unit="text", mininterval=0.5), options)
    document = analysis.document(
        input=args.input.name, label_field=args.label_field, **zero_shot_fields(parameters)
    )
    write_atomically(args.out / "analysis.json", json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    comparison = compare(baseline, document, options.top_k, args.threshold) if baseline else None
    _write_report(args.out / "report.html", document, comparison, f"Clarion analysis: {args.input.name}")
    report(f"analysis of {document['clarion']['texts']} text(s): {args.out / 'analysis.json'}, report.html")
    return 0


def _write_report(
    path: Path, document: dict[str, Any], comparison: dict[str, Any] | None, title: str
) -> None:
    from shared.render.report import analysis_report

    write_atomically(path, analysis_report(document, comparison, title=title))


def compare_main(args: argparse.Namespace) -> int:
    comparison = compare(
        load_analysis(args.baseline), load_analysis(args.current), args.top_k, args.threshold
    )
    if args.json:
        write_atomically(args.json, json.dumps(comparison, indent=1, ensure_ascii=False) + "\n")
    for label, result in comparison["labels"].items():
        state = "DRIFT" if result["drifted"] else "ok"
        moved = ", ".join(
            f"{unit_name(comparison, m)} {m['baseline_rank'] or '-'}->{m['current_rank'] or '-'}"
            for m in result["moved"][:5]
        )
        print(f"{label}\tnDCG {result['ndcg']:.4f}\t{state}\t{moved}")
    for side in ("only_in_baseline", "only_in_current"):
        if comparison[side]:
            print(f"{side.replace('_', ' ')}: {', '.join(comparison[side])}", file=sys.stderr)
    return EXIT_DRIFT if comparison["drifted"] else 0
