"""`clarion explain INPUT --out results.jsonl [--html report.html]`: explain a file of texts.

INPUT is a `.txt` (one text per line), a `.jsonl` (a `text` field, `--field` to change it) or a
`.csv` (a `text` column, `--column` to change it); `--pair-field NAME` makes each record a text pair,
its second text in that field or column (a record without one is that line's error). Texts run in
this process (the model from the same settings as `clarion serve`), or against a running Clarion
with `--url`. Every record written to `--out` is one whole JSON line, flushed as it is written,
tagged with its input line number: a rerun skips the lines already there (resume), and Ctrl-C
leaves a valid file. A line the input
got wrong (not JSON, no text, empty, too long, not valid Unicode) is reported with its number,
written as an error record and skipped; a failure of the server itself stops the run (rerun to
resume). `--html` draws every record of `--out` with the API's renderer, after a summary table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.errors import ClarionError, InvalidRequest
from shared.io.inputs import DEFAULT_HYPOTHESIS, Input, as_record, stored
from shared.io.records import EMPTY, Record, csv_table, json_lines, json_pair_lines
from shared.io.schemas import SeedBody, parse_model, text_problem
from shared.kinds import GRANULARITIES, LONG_TEXTS, MASKINGS, OUTPUTS, PRECISIONS
from shared.settings import Settings


class ServerFailure(ClarionError):
    """The Clarion server (or the connection to it) failed: stop, and let a rerun resume."""


# ---- reading the input ----------------------------------------------------------------------------


def read_lines(
    path: Path,
    field: str = "text",
    column: str = "text",
    label: str | None = None,
    delimiter: str = ",",
    pair: str | None = None,
) -> Iterator[Record]:
    """The input's records: `field` of a .jsonl, `column` of a .csv (or tab-separated .tsv), each
    line of a .txt; `label` names the field or column holding the true label (none in a .txt);
    `pair` the field or column holding each record's second text (a text pair; none in a .txt)."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_lines(path, field, label, pair)
    if suffix in (".csv", ".tsv"):
        return _csv_lines(path, column, label, "\t" if suffix == ".tsv" else delimiter, pair)
    if suffix == ".txt":
        if label:
            raise ClarionError(f"{path}: a .txt input has no labels; use .jsonl or .csv for --label-field")
        if pair:
            raise ClarionError(
                f"{path}: a .txt input holds one text per line; use .jsonl or .csv for --pair-field"
            )
        return _txt_lines(path)
    raise ClarionError(f"{path}: unknown input type {suffix!r}; use .txt, .jsonl, .csv or .tsv")


def _open_text(path: Path):  # type: ignore[no-untyped-def]
    # Undecodable bytes become U+FFFD so that one bad line cannot stop the run; such a line is
    # still explained, as the text it decodes to.
    return path.open(encoding="utf-8", errors="replace", newline="")


def _txt_lines(path: Path) -> Iterator[Record]:
    with _open_text(path) as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.rstrip("\r\n")
            yield Record(number, text, None if text.strip() else EMPTY)


def _jsonl_lines(path: Path, field: str, label: str | None, pair: str | None) -> Iterator[Record]:
    with _open_text(path) as handle:
        if pair is None:
            yield from json_lines(handle, (field,), label)
            return
        yield from json_pair_lines(handle, (field,), pair, label)


def _csv_lines(
    path: Path, column: str, label: str | None, delimiter: str, pair: str | None
) -> Iterator[Record]:
    with _open_text(path) as handle:
        yield from csv_table(handle, column, label, delimiter, str(path), pair)


# ---- the output file ------------------------------------------------------------------------------


def finished_lines(out: Path) -> set[int]:
    """Input lines already in `out`. A last line cut short (a killed run) is removed."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    keep = data if data.endswith(b"\n") or not data else data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        with out.open("r+b") as handle:
            handle.truncate(len(keep))
    done = set()
    for raw in keep.splitlines():
        try:
            done.add(int(json.loads(raw)["line"]))
        except (ValueError, KeyError, TypeError):
            continue
    return done


def read_records(out: Path) -> list[dict[str, Any]]:
    records = []
    if out.exists():
        for raw in out.read_bytes().splitlines():
            try:
                records.append(json.loads(raw))
            except ValueError:
                continue
    return sorted(records, key=lambda r: r.get("line", 0))


# ---- explaining ---------------------------------------------------------------------------------

Explain = Callable[[list[Input]], list[dict[str, Any]]]


def in_process(parameters: dict[str, Any], settings: Settings) -> Explain:
    from shared.serving.service import ClarionService

    body = parse_model(SeedBody, {"data": "x", **parameters}, settings).model_copy(update={"explain": True})
    if body.precision != "fast":  # measuring fast's candidates would take CPU from the run for nothing
        settings = dataclasses.replace(settings, fast_backend="exact")
    service = ClarionService(settings, threads=os.cpu_count() or 1)
    service.load()
    # Unknown labels, zero-shot labels without an NLI model: the run stops now, not line by line.
    service.check_options(body.explain_options(), body.inputs(["x"]))

    def explain(texts: list[Input]) -> list[dict[str, Any]]:
        return service.results(texts, body)  # zero-shot: each text against the labels

    return explain


def over_http(
    parameters: dict[str, Any], url: str, api_key: str | None, timeout: float, jobs: int = 0
) -> Explain:
    """Explain through a running Clarion with clarion-client (client/), which retries what it
    safely can; what is left is this text's fault (InvalidRequest) or the server's (ServerFailure).
    With `jobs`, each chunk is an explanation job (POST /explanations, submitted with an
    Idempotency-Key), waited for: a deployment with workers runs the chunks in flight in parallel."""
    try:
        from clarion_client import APIError, Clarion, ClarionClientError, JobFailed
    except ImportError:  # a server installed without scripts/install.sh
        raise ClarionError("--url needs clarion-client: pip install ./client") from None

    if timeout <= 0:  # a socket with no time at all would not even connect
        raise ClarionError(f"--timeout must be more than 0 seconds, not {timeout:g}")
    try:
        clarion = Clarion(url, api_key=api_key, timeout=timeout)
    except ValueError as exc:  # not an http(s) URL
        raise ClarionError(f"--url: {exc}") from None
    endpoint = clarion.url + ("/explanations" if jobs else "/invocations")
    options = {name: value for name, value in parameters.items() if name != "explain"}

    def ask(texts: list[Any]) -> Any:
        if not jobs:
            return clarion.explain(texts, **options)
        # The job's own time limits end it; the wait has none of its own.
        return clarion.wait(clarion.submit(texts, **options)).result

    def explain(texts: list[Input]) -> list[dict[str, Any]]:
        try:
            return ask([stored(text) for text in texts])  # a pair as its object
        except APIError as exc:
            if exc.status in (400, 413) or (exc.status == 503 and "timeout" in exc.message):
                raise InvalidRequest(exc.message) from None  # this text's (or chunk's) fault
            raise ServerFailure(f"{endpoint} answered {exc.status}: {exc.message}") from None
        except JobFailed as exc:  # checked at submit, so a failure at run time is the deployment's
            raise ServerFailure(
                f"{endpoint}: {exc.message} (rerun to resume; a smaller --chunk if it ran out of time)"
            ) from None
        except ClarionClientError as exc:
            raise ServerFailure(exc.message) from None

    return explain


def explain_file(
    lines: list[Record],
    out: Path,
    explain: Explain,
    settings: Settings,
    parameters: dict[str, Any],
    chunk: int,
    report: Callable[[str], None],
    parallel: int = 1,
) -> tuple[int, int]:
    """Explain the lines not yet in `out`, appending a record per line (in the order chunks finish,
    `parallel` chunks in flight at most). Returns (explained, bad)."""
    from tqdm import tqdm

    counts = {"explained": 0, "bad": 0}
    lock = threading.Lock()  # chunks in flight (--jobs) write, count and draw from their own threads
    stopped = threading.Event()  # set once the run ends: a chunk still in flight writes nothing more
    with out.open("a", encoding="utf-8") as sink, tqdm(total=len(lines), unit="text", mininterval=0.5) as bar:

        def write(entry: dict[str, Any], outcome: str) -> None:
            with lock:
                if stopped.is_set():  # a rerun redoes that chunk's lines
                    return
                sink.write(json.dumps(entry, ensure_ascii=False) + "\n")
                sink.flush()  # whole lines only, so Ctrl-C or a kill leaves a file a rerun can resume
                counts[outcome] += 1
                bar.update(1)

        def reject(record: Record, problem: str) -> None:
            report(f"line {record.line}: skipped: {problem}")
            write({"line": record.line, "error": {"code": "invalid_line", "message": problem}}, "bad")

        def run(chunk: list[Record]) -> None:
            for record, result in _explain_isolating(chunk, explain, reject):
                truth = {} if record.label is None else {"true_label": record.label}
                write({"line": record.line, **as_record(record.text or ""), **truth, **result}, "explained")

        def chunks() -> Iterator[list[Record]]:
            pending: list[Record] = []
            for line in lines:
                problem = line.problem or text_problem(line.text, parameters, settings)
                if problem:
                    reject(line, problem)
                    continue
                pending.append(line)
                if len(pending) >= chunk:
                    yield pending
                    pending = []
            if pending:
                yield pending

        try:
            if parallel <= 1:
                for each in chunks():
                    run(each)
            else:
                _run_in_flight(chunks(), run, parallel)
        finally:
            with lock:
                stopped.set()
    return counts["explained"], counts["bad"]


def _run_in_flight(
    chunks: Iterator[list[Record]], run: Callable[[list[Record]], None], parallel: int
) -> None:
    """`run` each chunk on a thread, `parallel` at most at once; the first failure (or Ctrl-C)
    stops the submitting, and is raised once the chunks already in flight are given up on."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="clarion-chunk")
    in_flight: set[Future] = set()
    try:
        for each in chunks:
            if len(in_flight) >= parallel:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
            in_flight.add(pool.submit(run, each))
        for future in in_flight:
            future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _explain_isolating(
    lines: list[Record], explain: Explain, reject: Callable[[Record, str], None]
) -> Iterator[tuple[Record, dict[str, Any]]]:
    """Explain a chunk at once; if it is refused, each text alone, so one bad text costs only itself."""
    if not lines:
        return
    try:
        yield from zip(lines, explain([line.text or "" for line in lines]), strict=True)
        return
    except InvalidRequest as exc:
        if len(lines) == 1:
            reject(lines[0], exc.message)
            return
    for line in lines:
        yield from _explain_isolating([line], explain, reject)


def write_report(out: Path, html_path: Path, title: str) -> int:
    from shared.render.html import explanation_document

    records = [r for r in read_records(out) if "prediction" in r]
    texts = [r["text"] for r in records]
    results = [{k: v for k, v in r.items() if k not in ("line", "text")} for r in records]
    document = explanation_document(texts, results, title=title, summary=True)
    temporary = html_path.with_name(html_path.name + ".tmp")
    temporary.write_text(document, encoding="utf-8")
    temporary.replace(html_path)
    return len(records)


# ---- the command ----------------------------------------------------------------------------------


def add_server_options(parser: argparse.ArgumentParser, url_help: str) -> None:
    """Where a file's texts are explained, and how many at once: the options of every command that
    explains a file (`explain`, `analyze`, `distill`)."""
    parser.add_argument("--url", help=url_help)
    parser.add_argument(
        "--api-key", default=os.environ.get("CLARION_API_KEY"), help="for --url (default: $CLARION_API_KEY)"
    )
    parser.add_argument("--chunk", type=int, default=8, help="texts explained together (default 8)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per call with --url")
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        metavar="N",
        help="with --url: N chunks at once, each an explanation job that the server's workers run "
        "in parallel (default 0: one chunk at a time, answered in the request)",
    )


def add_explanation_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that explains a file with options of its choosing (`explain`,
    `analyze`)."""
    add_server_options(parser, "a running Clarion (default: explain in this process)")
    parser.add_argument("--granularity", choices=list(GRANULARITIES), default="word")
    parser.add_argument("--max-evals", type=int, help="model evaluations per text (default: the API's)")
    parser.add_argument(
        "--time-budget", type=float, help="seconds of exact refinement per --chunk of texts (anytime values)"
    )
    parser.add_argument("--labels", default="all", help='"all", "predicted" or label names, comma-separated')
    parser.add_argument("--precision", choices=list(PRECISIONS), default="exact")
    parser.add_argument(
        "--long-text", choices=list(LONG_TEXTS), default="truncate", help="texts longer than the model"
    )
    parser.add_argument("--output", choices=list(OUTPUTS), default="probability")
    parser.add_argument(
        "--masking", choices=list(MASKINGS), default="tokens", help='"text": the seed\'s numbers (see docs)'
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--candidate-labels",
        metavar="A,B,...",
        help="zero-shot (an NLI model): score and explain each text against these labels, comma-separated",
    )
    parser.add_argument(
        "--hypothesis-template",
        metavar="TEMPLATE",
        help='with --candidate-labels: the hypothesis, "{}" standing for the label (default '
        f"{DEFAULT_HYPOTHESIS!r}, as transformers' pipeline)",
    )
    parser.add_argument(
        "--multi-label", action="store_true", help="with --candidate-labels: each label scored on its own"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help=".txt (a text per line), .jsonl, .csv or .tsv")
    parser.add_argument("--out", type=Path, required=True, help="JSON Lines results; resumed if it exists")
    parser.add_argument("--html", type=Path, help="also write a self-contained HTML report here")
    parser.add_argument("--field", default="text", help="the text field of a .jsonl input")
    parser.add_argument("--column", default="text", help="the text column of a .csv input")
    parser.add_argument(
        "--pair-field",
        metavar="NAME",
        help="text pairs (NLI, cross-encoders): each record's second text, a .jsonl field or .csv column",
    )
    add_explanation_options(parser)
    parser.add_argument(
        "--faithfulness", action="store_true", help="also measure ERASER comprehensiveness and sufficiency"
    )


def explanation_parameters(
    args: argparse.Namespace, settings: Settings, faithfulness: bool
) -> dict[str, Any]:
    """The request options the arguments ask for, validated now (a wrong one stops the run here)."""
    labels = args.labels if args.labels in ("all", "predicted") else args.labels.split(",")
    parameters: dict[str, Any] = {
        "explain": True,
        "granularity": args.granularity,
        "labels": labels,
        "precision": args.precision,
        "long_text": args.long_text,
        "output": args.output,
        "masking": args.masking,
        "seed": args.seed,
        "faithfulness": faithfulness,
    }
    if args.max_evals is not None:
        parameters["max_evals"] = args.max_evals
    if args.time_budget is not None:
        parameters["time_budget"] = args.time_budget
    parameters.update(zero_shot_parameters(args))
    body = parse_model(SeedBody, {"data": "x", **parameters}, settings)
    if body.candidate_labels is not None:
        from shared.explanation.explainer import check_pair_options

        if getattr(args, "pair_field", None) is not None:
            raise ClarionError(
                "--candidate-labels scores single texts: give --pair-field (text pairs) or "
                "--candidate-labels (zero-shot), not both"
            )
        try:  # what zero-shot texts cannot take stops the run here, as for pairs
            check_pair_options(body.explain_options())
        except InvalidRequest as exc:
            raise ClarionError(f"--candidate-labels: {exc.message}") from None
    return parameters


def zero_shot_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The request's zero-shot options from --candidate-labels (comma-separated, each trimmed),
    --hypothesis-template and --multi-label."""
    if args.candidate_labels is None:
        if args.hypothesis_template is not None or args.multi_label:
            raise ClarionError(
                "--hypothesis-template and --multi-label go with --candidate-labels (zero-shot)"
            )
        return {}
    found: dict[str, Any] = {
        "candidate_labels": [label.strip() for label in args.candidate_labels.split(",")],
        "multi_label": args.multi_label,
    }
    if args.hypothesis_template is not None:
        found["hypothesis_template"] = args.hypothesis_template
    return found


def check_pairs(args: argparse.Namespace, parameters: dict[str, Any], settings: Settings) -> None:
    """What text pairs cannot take stops the run here, not line by line (docs/models.md): the
    --pair-field of `clarion explain` and `clarion analyze`."""
    from shared.explanation.explainer import check_pair_options

    if not args.pair_field:
        raise ClarionError("--pair-field: name the field or column holding each record's second text")
    try:
        check_pair_options(parse_model(SeedBody, {"data": "x", **parameters}, settings).explain_options())
    except InvalidRequest as exc:
        raise ClarionError(f"--pair-field: {exc.message}") from None


def report(message: str) -> None:
    print(f"clarion: {message}", file=sys.stderr, flush=True)


def explain_into(
    args: argparse.Namespace,
    settings: Settings,
    parameters: dict[str, Any],
    records: Iterator[Record],
    out: Path,
) -> int | None:
    """Explain the records not yet in `out` (resuming), as `args` says (here or over --url).
    None when done; an exit code when interrupted."""
    if args.jobs < 0 or (args.jobs and not args.url):
        raise ClarionError(
            "--jobs N (N >= 1) sends chunks to the workers of the Clarion at --url: give --url"
        )
    done = finished_lines(out)
    lines = [r for r in records if r.line not in done]
    if done:
        report(f"{len(done)} line(s) already in {out}: resuming with {len(lines)}")
    explain = (
        over_http(parameters, args.url, args.api_key, args.timeout, args.jobs)
        if args.url
        else in_process(parameters, settings)
    )
    parallel = max(1, args.jobs) if args.url else 1
    try:
        explained, bad = explain_file(
            lines, out, explain, settings, parameters, max(1, args.chunk), report, parallel
        )
    except KeyboardInterrupt:
        report(f"interrupted: {out} holds every line finished so far; rerun to resume")
        return 130
    report(f"{explained} explained, {bad} skipped; results in {out}")
    return None


def main(args: argparse.Namespace, settings: Settings) -> int:
    parameters = explanation_parameters(args, settings, args.faithfulness)
    if args.pair_field is not None:
        check_pairs(args, parameters, settings)
        if args.html:
            raise ClarionError("--html draws one text per record: leave it out for text pairs (--pair-field)")
    if not args.input.is_file():
        raise ClarionError(f"{args.input}: no such file")
    lines = read_lines(args.input, args.field, args.column, pair=args.pair_field)
    interrupted = explain_into(args, settings, parameters, lines, args.out)
    if interrupted is not None:
        return interrupted
    if args.html:
        shown = write_report(args.out, args.html, f"Clarion report: {args.input.name}")
        report(f"HTML report of {shown} text(s): {args.html}")
    return 0
