"""clarion-client: a Clarion server's API from Python: classify, explain, explanation jobs and
analyses over HTTP, and served explanations as shap.Explanation objects for shap.plots.

It needs the standard library and numpy, and shap only to convert an explanation
(`pip install "clarion-client[shap]"`); it imports nothing of the server, so it runs wherever a
notebook does. It speaks the server API `API_VERSION` and checks the server's once.
"""

from clarion_client.client import Clarion
from clarion_client.errors import (
    APIError,
    BadRequest,
    ClarionClientError,
    ConnectionFailed,
    Forbidden,
    IdempotencyConflict,
    IncompatibleServer,
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
from clarion_client.explanations import shap_explanation, text_pieces
from clarion_client.jobs import Analysis, Job, Progress
from clarion_client.options import AnalysisOptions, ExplainOptions, ZeroShotOptions
from clarion_client.retries import RetryPolicy
from clarion_client.version import API_VERSION, __version__

__all__ = [
    "API_VERSION",
    "APIError",
    "Analysis",
    "AnalysisOptions",
    "BadRequest",
    "Clarion",
    "ClarionClientError",
    "ConnectionFailed",
    "ExplainOptions",
    "Forbidden",
    "IdempotencyConflict",
    "IncompatibleServer",
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
    "ZeroShotOptions",
    "__version__",
    "shap_explanation",
    "text_pieces",
]
