"""`Clarion`: a Clarion server's API as Python calls (classify, explain, jobs, analyses)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, Unpack

from clarion_client.errors import JobFailed, UnexpectedResponse, WaitTimedOut
from clarion_client.jobs import Analysis, Job, Tracked
from clarion_client.options import (
    AnalysisOptions,
    ExplainOptions,
    ZeroShotOptions,
    body_options,
    query_options,
)
from clarion_client.retries import RetryPolicy
from clarion_client.transport import IDEMPOTENCY_KEY, JSON, Response, Transport, new_idempotency_key

T = TypeVar("T", bound=Tracked)
# A text, a text pair {"text": ..., "text_pair": ...} (NLI, cross-encoders), or a list of them.
Input = str | Mapping[str, str]
Texts = Input | Sequence[Input]
Result = dict[str, Any]


class Clarion:
    """A Clarion server.

    `api_key` is sent as `Authorization: Bearer <key>` (default: the CLARION_API_KEY variable).
    `timeout` is how long a call waits to connect and for the answer, in seconds, unless the call
    says otherwise. A text gives a result (a dict); a list of texts, a list of results in order.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        key = os.environ.get("CLARION_API_KEY") if api_key is None else api_key
        self._transport = Transport(url, key or None, timeout, retry or RetryPolicy())

    @property
    def url(self) -> str:
        return self._transport.url

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """GET /ping: {"status": "healthy", "model", "labels", ...}, or "loading" or "failed"."""
        return self._get("/ping", timeout, answers=(503,)).json()

    # ---- synchronous: POST /invocations -------------------------------------------------------

    def classify(
        self,
        texts: Texts,
        *,
        long_text: str | None = None,
        timeout: float | None = None,
        **zero_shot: Unpack[ZeroShotOptions],
    ) -> Result | list[Result]:
        """Every label's score: {"prediction": [{"label", "score"}, ...], "truncated", "model"};
        with `candidate_labels` (an NLI model), every candidate's zero-shot score."""
        return self._invoke(texts, {"long_text": long_text, **zero_shot}, timeout)

    def explain(
        self, texts: Texts, *, timeout: float | None = None, **options: Unpack[ExplainOptions]
    ) -> Result | list[Result]:
        """The classification and its SHAP attributions (docs/api.md: `explanation`, `offsets`,
        `base_values`, `model_output`, `explanation_parameters`), within the server's request
        deadline; `shap_explanation(result, text)` makes it a shap.Explanation."""
        return self._invoke(texts, {**options, "explain": True}, timeout)

    def _invoke(self, texts: Texts, options: Mapping[str, Any], timeout: float | None) -> Any:
        # A synchronous invocation stores nothing on the server: replaying it is safe.
        response = self._post("/invocations", _texts_body(texts, options), timeout)
        return response.json()

    # ---- explanation jobs: POST /explanations -----------------------------------------------

    def submit(self, texts: Texts, *, timeout: float | None = None, **options: Unpack[ExplainOptions]) -> Job:
        """An explanation job: the texts are classified at once (`prediction`), explained by a
        worker (`wait` for it). Without a broker the server runs it within the request and the job
        comes back finished, so the same code serves both deployments."""
        # One Idempotency-Key for every try: a try whose answer was lost is answered with its job.
        response = self._post("/explanations", _texts_body(texts, options), timeout, idempotent=True)
        return _tracked(Job, response, texts=texts if isinstance(texts, str) else list(texts))

    def job(self, job_id: str, *, timeout: float | None = None) -> Job:
        """The job as it is now (404 NotFound: never issued, removed, or another key's)."""
        return _tracked(Job, self._get(Job.path_of(job_id), timeout))

    # ---- analyses: POST /analyses ------------------------------------------------------------

    def analyze(
        self,
        records: Iterable[Mapping[str, Any]] | None = None,
        *,
        csv: str | bytes | None = None,
        s3_input: str | None = None,
        s3_output: str | None = None,
        timeout: float | None = None,
        **options: Unpack[AnalysisOptions],
    ) -> Analysis:
        """A dataset analysis of `records` (dicts, sent as JSON Lines), of a CSV table with a header
        row, or of an S3 object (.jsonl, .csv, .tsv or .txt) read by the server; `s3_output` is an
        S3 prefix the server writes analysis.json, records.jsonl and report.html to. Single-process
        servers answer with the finished analysis."""
        given = [source is not None for source in (records, csv, s3_input)]
        if sum(given) != 1:
            raise ValueError("analyze: give exactly one of records, csv or s3_input")
        if s3_output is not None and s3_input is None:
            raise ValueError("analyze: s3_output goes with s3_input (a body's files stay on the server)")
        if records is not None:
            body = b"".join(json.dumps(record).encode() + b"\n" for record in records)
            content_type = "application/jsonlines"
        elif csv is not None:
            body, content_type = (csv.encode() if isinstance(csv, str) else csv), "text/csv"
        else:
            location = {"input": s3_input, **({"output": s3_output} if s3_output else {})}
            body, content_type = json.dumps(location).encode(), JSON
        response = self._transport.send(
            "POST",
            Analysis.collection,
            replayable=True,  # its Idempotency-Key makes a repeat answer with the same analysis
            headers={IDEMPOTENCY_KEY: new_idempotency_key()},
            body=body,
            content_type=content_type,
            query=query_options(options),
            timeout=timeout,
        )
        return _tracked(Analysis, response)

    def analysis(self, analysis_id: str, *, timeout: float | None = None) -> Analysis:
        """The analysis as it is now; `analysis` holds analysis.json once it succeeded."""
        return _tracked(Analysis, self._get(Analysis.path_of(analysis_id), timeout))

    def report(self, analysis: Analysis | str, *, timeout: float | None = None) -> str:
        """report.html of a succeeded analysis, self-contained (a status page while it runs)."""
        path = analysis.path if isinstance(analysis, Analysis) else Analysis.path_of(analysis)
        response = self._transport.send("GET", path, replayable=True, accept="text/html", timeout=timeout)
        return response.body.decode("utf-8")

    # ---- both: refresh, wait, delete -----------------------------------------------------------

    def refresh(self, tracked: T, *, timeout: float | None = None) -> T:
        """The job or analysis as it is now (the submitted texts carried over to a Job)."""
        extra = {"texts": tracked.texts} if isinstance(tracked, Job) else {}
        return _tracked(type(tracked), self._get(tracked.path, timeout), **extra)

    def wait(
        self,
        tracked: T,
        *,
        timeout: float | None = None,
        interval: float = 1.0,
        progress: Callable[[T], None] | None = None,
    ) -> T:
        """The job or analysis once it succeeded, polled every `interval` seconds; `progress` is
        called with every state seen (the first included). Raises JobFailed when it ends failed
        or cancelled, WaitTimedOut after `timeout` seconds (None: no limit; the server's time
        limits end every job)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if progress is not None:
                progress(tracked)
            if tracked.finished:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(tracked, timeout or 0.0)
            left = interval if deadline is None else min(interval, max(0.0, deadline - time.monotonic()))
            time.sleep(left)
            tracked = self.refresh(tracked)
        if tracked.status != "succeeded":
            raise JobFailed(tracked)
        return tracked

    def delete(self, tracked: T, *, timeout: float | None = None) -> T | None:
        """DELETE: a queued or running job or analysis is cancelled (its new state is returned);
        a finished one is removed with everything it stored (None; it is a NotFound from now on)."""
        # Not replayable: a second DELETE would remove the job the first one cancelled. It is tried
        # again only where the server surely did nothing (never sent, or a 429).
        response = self._transport.send("DELETE", tracked.path, replayable=False, timeout=timeout)
        if response.status == 204:
            return None
        extra = {"texts": tracked.texts} if isinstance(tracked, Job) else {}
        return _tracked(type(tracked), response, **extra)

    # ---- plumbing ------------------------------------------------------------------------------

    def _get(self, path: str, timeout: float | None, answers: tuple[int, ...] = ()) -> Response:
        return self._transport.send("GET", path, replayable=True, timeout=timeout, answers=answers)

    def _post(
        self, path: str, body: dict[str, Any], timeout: float | None, idempotent: bool = False
    ) -> Response:
        """A synchronous POST stores nothing (replaying it is safe); a submit is safe to replay with
        its Idempotency-Key."""
        headers = {IDEMPOTENCY_KEY: new_idempotency_key()} if idempotent else {}
        payload = json.dumps(body).encode()
        return self._transport.send(
            "POST", path, replayable=True, headers=headers, body=payload, content_type=JSON, timeout=timeout
        )


def _texts_body(texts: Texts, options: Mapping[str, Any]) -> dict[str, Any]:
    """The original project's body: {"data": text | [texts], ...options}."""
    data = texts if isinstance(texts, str | Mapping) else list(texts)
    return {"data": data, **body_options(options)}


def _tracked(cls: type[T], response: Response, **client_side: Any) -> T:
    body = response.json()
    try:
        return cls.from_body(body, **client_side)
    except (KeyError, TypeError, ValueError):
        raise UnexpectedResponse(
            f"{response.url} answered {response.status} without a {cls.kind}: {body!r:.200}"
        ) from None
