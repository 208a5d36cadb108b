"""KServe's V1 and V2 (Open Inference Protocol) REST protocols: adapters over the one classify-explain
use case that /invocations serves (docs/api.md, "KServe V1 and V2")."""

from __future__ import annotations

V1_PREFIX = "/v1/"
V2_PREFIX = "/v2"


def speaks_kserve(path: str) -> bool:
    """Whether a request path belongs to the protocols, whose errors are `{"error": "<message>"}`:
    every path under /v1/ and /v2, routed or not (a 404 or 405 there is the protocols' too)."""
    return path.startswith(V1_PREFIX) or path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


# The fields of a text's /invocations result that are its explanation; the others (prediction,
# truncated, model) are its prediction. V1's explanations and V2's attributions are these.
EXPLANATION_FIELDS = (
    "explanation",
    "offsets",
    "base_values",
    "model_output",
    "explanation_parameters",
    "faithfulness",
)
