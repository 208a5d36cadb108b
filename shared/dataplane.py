"""The data plane: everything a protocol asks of Clarion, without a web framework. Each protocol
(SageMaker's `/invocations` and records, Clarify, Batch Transform, KServe V1 and V2, the jobs and
analyses routes) is a codec around it: decode the request, make one call here, encode the answer.
As in KServe's own server, one object owns the model's lookup, readiness and metadata, inference,
and the jobs and analyses submitted, read and cancelled; the app factory builds it once per process
(api/app.py), and the command line uses the service under it directly."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import NotFound
from shared.io.inputs import Input
from shared.io.results import Classification, Explanation, Health
from shared.io.schemas import InvocationParameters
from shared.jobs.analysis import Analyses, StoredAnalysis, check_analysis, new_analysis, stage
from shared.jobs.inline import JobQueue
from shared.jobs.job import Idempotency, StoredJob, new_job
from shared.runtime.engine import Ticket
from shared.runtime.model import TextModel
from shared.serving.service import ClarionService
from shared.settings import Settings

# What an analysis's input gives once read: its lines, where they came from (None: the request
# body) and where its files go (None: nowhere but Redis).
AnalysisInput = tuple[Iterable[Any], str | None, str | None]


def versions_of(model: TextModel) -> list[str]:
    """The versions of a model served (KServe V2's metadata lists them, its paths may name one):
    one, its fingerprint, which changes with its weights, config or tokenizer (stored jobs'
    `model_fingerprint`)."""
    return [model.fingerprint]


@dataclass(frozen=True)
class DataPlane:
    """The settings the process was given, the service that classifies and explains, and where jobs
    and analyses run (the workers, or this process)."""

    settings: Settings
    service: ClarionService
    jobs: JobQueue
    analyses: Analyses

    # ---- the model: readiness, metadata, lookup ------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.service.ready

    def health(self) -> Health:
        return self.service.status()

    def versions(self) -> list[str]:
        return versions_of(self.service.model)

    def model(self, name: str, version: str | None = None) -> TextModel:
        """The model a request names, and the version it names if any: ModelNotReady (503) while it
        loads or if it failed to, NotFound (404) for another name or another version. Its name is
        the one /ping and stored jobs give it (`model`)."""
        model = self.service.model
        if name != model.model_id:
            raise NotFound(f"model {name!r} is not served here; this server serves {model.model_id!r}")
        if version is not None and version not in self.versions():
            raise NotFound(
                f"model {name!r} has no version {version!r} here; the versions served: {self.versions()}"
            )
        return model

    # ---- inference -----------------------------------------------------------------------------

    def results(
        self, texts: Sequence[Input], parameters: InvocationParameters, ticket: Ticket
    ) -> list[dict[str, Any]]:
        """Each text's /invocations result within the request's deadline (ClarionService.results)."""
        return self.service.results(texts, parameters, ticket)

    def classify_then_explain(
        self,
        texts: Sequence[Input],
        parameters: InvocationParameters,
        which: Callable[[list[Classification]], list[bool]],
        ticket: Ticket,
    ) -> tuple[list[Classification], list[Explanation | None]]:
        """Clarify's exchange: every text's classification, then the explanations of the texts that
        `which` chooses from those classifications (Clarify's EnableExplanations expression), None
        for the others."""
        service, long_text = self.service, parameters.long_text
        classified = [p.classification for p in service.predict_in_passes(texts, long_text, None, ticket)]
        wanted = which(classified)
        chosen = [text for text, explain in zip(texts, wanted, strict=True) if explain]
        options = parameters.explain_options()
        explained = iter(p.explanation for p in service.predict_in_passes(chosen, long_text, options, ticket))
        return classified, [next(explained) if explain else None for explain in wanted]

    # ---- explanation jobs ----------------------------------------------------------------------

    def submit_job(
        self,
        texts: Sequence[Input],
        single: bool,
        parameters: InvocationParameters,
        ticket: Ticket,
        owner: str | None,
        idempotency: Idempotency | None,
    ) -> tuple[StoredJob, bool]:
        """Classify the texts, then queue a job that explains them (in single-process mode, run it
        now, within `ticket`); with an Idempotency-Key used before for the same request, the job it
        made. A job that cannot succeed is refused now (a 400), not failed later. Returns the job
        and whether it was made before."""
        service = self.service
        options = parameters.explain_options()
        inputs = parameters.inputs(list(texts))  # zero-shot texts carry their labels into the job
        service.check_options(options, inputs)
        job = new_job(
            service.model.model_id,
            inputs,
            single,
            options,
            service.classify(inputs, ticket, parameters.long_text),
            owner=owner,
            model_fingerprint=service.model.fingerprint,
        )
        return self.jobs.submit(job, ticket, idempotency)

    def job(self, job_id: str, owner: str | None) -> StoredJob:
        """The job, if `owner` may see it: with API keys, only the key that submitted it may."""
        job = self.jobs.get(job_id)
        if job.owner != owner:
            raise NotFound(f"no explanation job {job_id!r}")
        return job

    def cancel_job(self, job_id: str, owner: str | None) -> StoredJob | None:
        """Cancel a queued or running job (returned, cancelled), or remove a finished one with
        its result (None: a GET is a 404 from now on)."""
        self.job(job_id, owner)
        return self.jobs.delete(job_id)

    def pending_jobs(self) -> int | None:
        return self.jobs.pending()

    # ---- dataset analyses ----------------------------------------------------------------------

    def submit_analysis(
        self,
        parameters: dict[str, Any],
        spec: dict[str, Any],
        read_input: Callable[[], AnalysisInput],
        ticket: Ticket,
        owner: str | None,
        idempotency: Idempotency | None,
    ) -> tuple[StoredAnalysis, bool]:
        """Check an analysis's options against the model (a 400 before its input is read), then,
        unless its Idempotency-Key made it before, read and stage its input and run it (inline,
        within `ticket`) or publish it to the workers. Returns it and whether it was made before."""
        settings, store = self.settings, self.analyses.store
        analysis = new_analysis(self.service.model.model_id, parameters, spec, settings, owner=owner)
        check_analysis(self.service, analysis)  # labels, zero-shot, pairs, amortized
        made = store.find(idempotency)  # a retried submit: no second read of its input, no staging
        if made is not None:
            return made, True
        lines, analysis.input, analysis.output = read_input()
        made, replayed = stage(store, analysis, lines, settings, idempotency)
        return (made, True) if replayed else (self.analyses.submit(made, ticket), False)

    def analysis(self, analysis_id: str, owner: str | None) -> StoredAnalysis:
        """The analysis, if `owner` may see it (as for jobs)."""
        analysis = self.analyses.store.load(analysis_id)
        if analysis is None or analysis.owner != owner:
            raise NotFound(f"no analysis {analysis_id!r}")
        return analysis

    def cancel_analysis(self, analysis_id: str, owner: str | None) -> StoredAnalysis | None:
        """Like a job's: cancel an unfinished analysis (returned), or remove a finished one with
        everything it stored (None)."""
        self.analysis(analysis_id, owner)
        return self.analyses.delete(analysis_id)
