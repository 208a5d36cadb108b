"""The words of Clarion's vocabulary that take one of a few values, each declared once: request
options, result fields and job states use these types, so a new value is added in one place."""

from __future__ import annotations

from typing import Literal, get_args

Granularity = Literal["token", "word", "sentence", "paragraph"]
GRANULARITIES: tuple[Granularity, ...] = get_args(Granularity)
Masking = Literal["tokens", "text"]
MASKINGS: tuple[Masking, ...] = get_args(Masking)
Precision = Literal["exact", "fast", "amortized"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
LongText = Literal["truncate", "windows"]
LONG_TEXTS: tuple[LongText, ...] = get_args(LongText)
Output = Literal["probability", "logit"]  # what an explanation explains: the scores, or raw logits
OUTPUTS: tuple[Output, ...] = get_args(Output)
# What turns a head's logits into scores, as transformers' text-classification pipeline decides it.
Activation = Literal["softmax", "sigmoid", "none"]
# "remote": the passes are calls to a model Clarion does not host (MODEL_URL).
ExactBackend = Literal["torch", "onnxruntime", "remote"]
FastBackend = Literal["torch", "onnxruntime", "onnxruntime-int8", "torch-half", "remote"]

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = get_args(JobStatus)
FINISHED: frozenset[str] = frozenset({SUCCEEDED, FAILED, CANCELLED})
