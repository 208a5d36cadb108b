"""`python -m bench readable`: what granularity and windows cost.

1. Granularity: token, word and sentence explanations of the same SST-2 sentences, interleaved per
   sentence (in one process, one engine): evaluations and seconds at max_evals 500, and the
   evaluations an exact answer needs (max_evals high enough to walk the whole tree).
2. A long document: a 2,000-word review built from SST-2 sentences, explained at sentence
   granularity with long_text "windows" as a job (API + Redis + a Celery worker), max_evals 500:
   seconds from submit to succeeded, evaluations, windows run and memoised, additivity. Then the
   same explanation in this process with and without the window memo, to measure what it saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DEFAULT_OUT,
    MINILM_DIR,
    environment,
    fmt,
    median,
    service_env,
    sst2_sentences,
    table,
    write_results,
)

GRANULARITIES = ("token", "word", "sentence")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sentences", type=int, default=20)
    parser.add_argument("--max-evals", type=int, default=500)
    parser.add_argument("--words", type=int, default=2000, help="length of the long document")
    parser.add_argument("--model-dir", default=str(MINILM_DIR))
    parser.add_argument("--no-memo-run", action="store_true", help="also time the document without the memo")
    parser.add_argument(
        "--window-tokens", type=int, default=None, help="WINDOW_TOKENS (default: the model's)"
    )
    parser.add_argument("--parts", default="granularity,document", help="comma list of the parts to run")


def main(args: argparse.Namespace) -> int:
    if args.smoke:
        # 300 words: still two windows, and rows memoised between them
        args.sentences, args.max_evals, args.words = 1, 40, 300
    parts = set(args.parts.split(","))
    granularity = _granularity(args) if "granularity" in parts else {}
    document = _document(args) if "document" in parts else {}
    data = {
        "config": vars(args),
        "environment": environment(),
        "granularity": granularity,
        "document": document,
    }
    text = _report(granularity, document, args)
    write_results(Path(args.out or DEFAULT_OUT), "readable", data, text)
    print(text)
    return 0


def _service(model_dir: str, window_tokens: int | None = None):  # type: ignore[no-untyped-def]
    from shared.serving.service import ClarionService
    from shared.settings import Settings

    settings = Settings(model_dir=model_dir, explanation_cache_size=0, max_evals_limit=100_000)
    if window_tokens:
        settings = dataclasses.replace(settings, window_tokens=window_tokens)
    service = ClarionService(settings, threads=2)
    service.load()
    return service, settings


def _options(settings: Any, **values: Any) -> Any:
    from shared.io.schemas import ExplainOptions, parse_model

    return parse_model(ExplainOptions, {"labels": "all", **values}, settings)


def _granularity(args: argparse.Namespace) -> dict[str, Any]:
    service, settings = _service(args.model_dir)
    sentences = sst2_sentences(args.sentences)
    service.explain(sentences[:1], _options(settings, max_evals=args.max_evals))  # warm
    per: dict[str, dict[str, list[float]]] = {
        g: {"seconds": [], "evals": [], "exact_evals": []} for g in GRANULARITIES
    }
    for sentence in sentences:  # interleaved: the granularities see the same machine noise
        for g in GRANULARITIES:
            started = time.perf_counter()
            (explanation,) = service.explain(
                [sentence], _options(settings, granularity=g, max_evals=args.max_evals)
            )
            per[g]["seconds"].append(time.perf_counter() - started)
            per[g]["evals"].append(explanation.evaluations)
            (exact,) = service.explain([sentence], _options(settings, granularity=g, max_evals=100_000))
            per[g]["exact_evals"].append(exact.evaluations)
    service.stop()
    return {
        g: {
            "total_s": sum(v["seconds"]),
            "median_s": median(v["seconds"]),
            "total_evals": sum(v["evals"]),
            "median_evals": median(v["evals"]),
            "median_exact_evals": median(v["exact_evals"]),
            "total_exact_evals": sum(v["exact_evals"]),
        }
        for g, v in per.items()
    }


def long_review(words: int) -> str:
    """SST-2 sentences, capitalised, in paragraphs of six, until `words` words."""
    out, paragraph, count = [], [], 0
    for sentence in sst2_sentences():
        text = sentence.strip()
        paragraph.append(text[:1].upper() + text[1:])
        count += len(text.split())
        if len(paragraph) == 6:
            out.append(" ".join(paragraph))
            paragraph = []
        if count >= words:
            break
    if paragraph:
        out.append(" ".join(paragraph))
    return "\n\n".join(out)


def _document(args: argparse.Namespace) -> dict[str, Any]:
    from tests.support import RedisServer, Worker, running_service, wait_healthy, wait_until

    review = long_review(args.words)
    request = {
        "data": review,
        "long_text": "windows",
        "granularity": "sentence",
        "labels": "all",
        "max_evals": args.max_evals,
    }
    result: dict[str, Any] = {"words": len(review.split()), "characters": len(review)}
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        env = {
            "MODEL_DIR": args.model_dir,
            "REDIS_URL": redis.url,
            "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
            "WORKER_CONCURRENCY": "1",  # one job, both cores
            "EXPLANATION_CACHE_SIZE": "0",
            "ACCESS_LOG": "false",
            **({"WINDOW_TOKENS": str(args.window_tokens)} if args.window_tokens else {}),
            **service_env(args.smoke),
        }
        worker = Worker(Path(tmp), env)
        try:
            with running_service(Path(tmp), env) as api:
                wait_healthy(api, timeout=300)
                wait_until(lambda: "loaded from" in worker.log(), 300, what="the worker's model")
                started = time.perf_counter()
                job = api.post("/explanations", json=request).json()
                while job["status"] in ("queued", "running"):
                    time.sleep(0.2)
                    job = api.get(f"/explanations/{job['id']}").json()
                result["job_s"] = time.perf_counter() - started
                result["job_status"] = job["status"]
                if job["status"] == "succeeded":
                    body = job["result"]
                    result["parameters"] = body["explanation_parameters"]
                    result["sentences"] = len(body["explanation"])
                    result["additivity_error"] = max(
                        abs(
                            base + sum(v[label] for _, v in body["explanation"]) - body["model_output"][label]
                        )
                        for label, base in body["base_values"].items()
                    )
                else:
                    result["error"] = job.get("error")
        finally:
            worker.stop()
            redis.stop()
    if args.smoke:  # the job's own counts: no second model load in a smoke run
        p = result.get("parameters", {})
        run, memoised = p.get("windows_run", 0), p.get("windows_memoised", 0)
        result["in_process"] = {
            "rows_with_memo": run,
            "rows_without_memo": run + memoised,
            "with_memo_s": None,
        }
    else:
        result["in_process"] = _memo_compare(args, request, run_without=args.no_memo_run)
    return result


def _memo_compare(args: argparse.Namespace, request: dict[str, Any], run_without: bool) -> dict[str, Any]:
    """The same explanation in this process, with the window memo and (if asked) without it."""
    from shared import explainer

    service, settings = _service(args.model_dir, args.window_tokens)
    options = _options(settings, **{k: v for k, v in request.items() if k != "data"})
    out: dict[str, Any] = {}
    started = time.perf_counter()
    (with_memo,) = service.explain([request["data"]], options)
    out["with_memo_s"] = time.perf_counter() - started
    out["rows_with_memo"] = with_memo.windows_run or 0
    out["rows_without_memo"] = out["rows_with_memo"] + (with_memo.windows_memoised or 0)
    if run_without:
        original = explainer._Game.rows_needed

        def forgetful(job: Any, documents: list[Any]) -> list[Any]:
            job.memo.clear()  # every row of every document is run again
            return original(job, documents)

        explainer._Game.rows_needed = forgetful  # type: ignore[method-assign]
        try:
            started = time.perf_counter()
            (without,) = service.explain([request["data"]], options)
            out["without_memo_s"] = time.perf_counter() - started
            out["same_values"] = max(
                abs(a - b)
                for label in without.labels
                for a, b in zip(without.values[label], with_memo.values[label], strict=True)
            )
        finally:
            explainer._Game.rows_needed = original  # type: ignore[method-assign]
    service.stop()
    return out


def _report(granularity: dict[str, Any], document: dict[str, Any], args: argparse.Namespace) -> str:
    headers = [
        "granularity",
        "evals (median)",
        "seconds (median)",
        f"seconds ({args.sentences} texts)",
        "exact evals (median)",
    ]
    rows = [
        [
            g,
            fmt(v["median_evals"], ".0f"),
            fmt(v["median_s"], ".3f"),
            fmt(v["total_s"]),
            fmt(v["median_exact_evals"], ".0f"),
        ]
        for g, v in granularity.items()
    ]
    lines = []
    if granularity:
        lines += [
            table(headers, rows),
            f"\n{args.sentences} SST-2 sentences, max_evals {args.max_evals}, all labels",
        ]
    if not document:
        return "\n".join(lines)
    p = document.get("parameters", {})
    memo = document["in_process"]
    lines.append(
        f"\nlong document: {document['words']} words, {document['characters']} characters, "
        f"{document.get('sentences', '?')} sentences; job {document['job_status']} "
        f"in {fmt(document['job_s'])} s; evaluations {p.get('evaluations')}, windows {p.get('windows')}, "
        f"window rows run {p.get('windows_run')}, memoised {p.get('windows_memoised')}; "
        f"additivity error {fmt(document.get('additivity_error'), '.2e')}"
    )
    if memo["with_memo_s"] is None:
        return "\n".join(lines)
    lines.append(
        f"in-process: {fmt(memo['with_memo_s'])} s with the memo ({memo['rows_with_memo']} rows), "
        f"{memo['rows_without_memo']} rows without it"
        + (
            f": {fmt(memo['without_memo_s'])} s, {fmt(memo['without_memo_s'] / memo['with_memo_s'])}x; "
            f"largest difference {fmt(memo['same_values'], '.1e')}"
            if "without_memo_s" in memo
            else ""
        )
    )
    return "\n".join(lines)
