"""KServe's V1 and V2 (Open Inference Protocol) REST protocols: adapters over the one classify-explain
use case that /invocations serves (docs/api.md, "KServe V1 and V2")."""

from __future__ import annotations

from werkzeug.routing import BaseConverter, Map

V1_PREFIX = "/v1/"
V2_PREFIX = "/v2"


class _ModelName(BaseConverter):
    """A model's name in a path: its id, which may hold slashes and colons (a hub id, an s3:// URL),
    but never ends in what follows a name in a longer route of the protocol. Werkzeug's `path`
    would take `tiny:predict` (or `tiny/infer`) for a name, so the model's GET route matched every
    operation's path: a wrong method there was a 404, or a 405 whose Allow named GET."""

    part_isolating = False
    endings: tuple[str, ...] = ()
    never_holds: str | None = None  # a part a name never contains: the one that starts a version's path

    def __init__(self, url_map: Map) -> None:
        super().__init__(url_map)
        any_char = "." if self.never_holds is None else f"(?:(?!{self.never_holds}).)"
        self.regex = any_char + "+" + "".join(f"(?<!{ending})" for ending in self.endings)


class V1ModelName(_ModelName):
    endings = (":predict", ":explain")


class V2ModelName(_ModelName):
    """V2's paths may name a version after the model (`<name>/versions/<v>/infer`): a name holding
    `/versions/` would be ambiguous, so none does."""

    endings = ("/ready", "/infer", "/explain")
    never_holds = "/versions/"


CONVERTERS = {"v1_model": V1ModelName, "v2_model": V2ModelName}


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
