"""A Python client for a Clarion server: classify, explain, explanation jobs and analyses over HTTP,
and served explanations as shap.Explanation objects for shap.plots (docs/client.md).

It needs the standard library and numpy, and shap only to convert an explanation; it imports
nothing else of Clarion, so it runs wherever a notebook does.
"""

from shared.client.client import Clarion
from shared.client.errors import (
    APIError,
    BadRequest,
    ClarionClientError,
    ConnectionFailed,
    JobFailed,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TimedOut,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedMediaType,
    WaitTimedOut,
)
from shared.client.explanations import shap_explanation, text_pieces
from shared.client.jobs import Analysis, Job, Progress
from shared.client.options import AnalysisOptions, ExplainOptions
from shared.client.retries import RetryPolicy

__all__ = [
    "APIError",
    "Analysis",
    "AnalysisOptions",
    "BadRequest",
    "Clarion",
    "ClarionClientError",
    "ConnectionFailed",
    "ExplainOptions",
    "Job",
    "JobFailed",
    "NotAcceptable",
    "NotFound",
    "PayloadTooLarge",
    "Progress",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "TimedOut",
    "Unauthorized",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "WaitTimedOut",
    "shap_explanation",
    "text_pieces",
]
