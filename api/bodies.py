"""The HTTP bodies of jobs and errors. A text's result (`TextResult`) is the shape that the
API, jobs and `clarion explain`'s records all hold, so it lives in shared/io/results.py; these exist only over
HTTP."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from shared.io.results import Classification, Explanation, LabelScore, Result, TextResult, text_response
from shared.jobs.analysis import AnalysisStore, StoredAnalysis
from shared.jobs.job import StoredJob
from shared.kinds import SUCCEEDED, JobStatus


class ErrorDetail(Result):
    code: str = Field(description="stable, machine-readable")
    message: str


class ErrorBody(Result):
    error: ErrorDetail


class ProtocolErrorBody(Result):
    """An error on KServe's V1 and V2 paths, in the shape their clients read (KServe's and Triton's)."""

    error: str = Field(description="the message")


class JobProgress(Result):
    """How far a job has come: model evaluations (masked documents) done, out of the most it may take
    (`max_evals` per text, 2 for a text of one unit); a text whose tree is walked whole sooner
    jumps to its end, so `done` can leap to `total` at the finish."""

    done: int = Field(ge=0)
    total: int = Field(ge=0)


class JobBody(Result):
    """An explanation job as the API shows it."""

    id: str
    status: JobStatus
    submitted_at: str
    started_at: str | None = Field(None, description="when a worker started it (absent while queued)")
    finished_at: str | None
    prediction: list[LabelScore] | list[list[LabelScore]]
    result: TextResult | list[TextResult] | None = Field(None, description="when succeeded")
    error: ErrorDetail | None = Field(None, description="when failed")
    progress: JobProgress | None = Field(
        None, description="once its worker reports (about every second while it runs), and when succeeded"
    )
    attempts: int | None = Field(
        None,
        description="times a worker started it: more than 1 when a worker was lost while it ran",
    )


def job_body(job: StoredJob) -> JobBody:
    """The job as the API shows it."""
    classifications = [Classification.model_validate(p) for p in job.predictions]
    fields: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "submitted_at": job.submitted_at,
        "finished_at": job.finished_at,
        **({"started_at": job.started_at} if job.started_at else {}),
        **({"progress": JobProgress(**job.progress)} if job.progress else {}),
        **({"attempts": job.attempts} if job.attempts else {}),
        "prediction": _shape(job.single, [c.prediction for c in classifications]),
    }
    if job.status == SUCCEEDED and job.explanations and len(job.explanations) == len(classifications):
        items = [
            text_response(c, Explanation.model_validate(e), job.model)
            for c, e in zip(classifications, job.explanations, strict=True)
        ]
        fields["result"] = _shape(job.single, items)
    if job.error is not None:
        fields["error"] = ErrorDetail.model_validate(job.error)
    return JobBody(**fields)


def error_detail(code: str, message: str) -> dict[str, Any]:
    """An error as every JSON error body and every failed record line carries it."""
    return {"error": {"code": code, "message": message}}


def _shape(single: bool, items: list[Any]) -> Any:
    return items[0] if single else items


class AnalysisBody(Result):
    """A dataset analysis as the API shows it."""

    id: str
    status: JobStatus
    submitted_at: str
    started_at: str | None = Field(None, description="when its first chunk started (absent while queued)")
    finished_at: str | None
    model: str
    lines: int = Field(description="lines read from the input")
    texts: int = Field(description="lines explained (the others were refused, and are skipped)")
    progress: JobProgress = Field(description="texts explained so far, of `texts`")
    input: str | None = Field(None, description="the S3 object analyzed (absent: the request body)")
    output: str | None = Field(None, description="where analysis.json, records.jsonl and report.html go")
    error: ErrorDetail | None = Field(None, description="when failed")
    analysis: dict[str, Any] | None = Field(
        None,
        description="analysis.json, when succeeded (docs/analysis.md): Clarify's layout and Clarion's extras",
    )


def analysis_body(analysis: StoredAnalysis, store: AnalysisStore) -> AnalysisBody:
    document = None
    if analysis.status == SUCCEEDED:
        raw = store.get(analysis.id, "analysis")
        document = json.loads(raw) if raw is not None else None
    return AnalysisBody(
        id=analysis.id,
        status=analysis.status,
        submitted_at=analysis.submitted_at,
        finished_at=analysis.finished_at,
        model=analysis.model,
        lines=analysis.lines,
        texts=analysis.texts,
        progress=JobProgress(**(analysis.progress or {"done": 0, "total": analysis.texts})),
        **({"started_at": analysis.started_at} if analysis.started_at else {}),
        **({"input": analysis.input} if analysis.input else {}),
        **({"output": analysis.output} if analysis.output else {}),
        **({"error": ErrorDetail.model_validate(analysis.error)} if analysis.error else {}),
        **({"analysis": document} if document is not None else {}),
    )
