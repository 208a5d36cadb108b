"""Finished explanations and classifications, cached so identical requests are not computed twice.

The key covers everything that changes the numbers beyond float rounding (which backend runs exact
passes, or what shares an exact pass, moves only the last bits): the algorithm's version, the
model's identity, the text, every explanation option (SHAP's batch size among them), and what
computed them besides the model: the backend of "fast" passes (not cached while it may still
change), the artifact of "amortized" ones. Not covered: an int8 pass quantizes its activations over
the whole pass, so the rows that share it move its numbers by more than rounding, and a pass wider
than the int8 graph runs in fp32; both stay within what precision "fast" promises. Explanations:
Redis (shared by the API and all workers) when Redis is configured, else an in-process LRU (each
process its own). Classifications (cheap, small): an in-process LRU. Neither with
EXPLANATION_CACHE_SIZE=0. A cache failure never fails a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from shared.io.inputs import Input, input_key
from shared.io.results import Explanation
from shared.io.schemas import ExplainOptions
from shared.runtime.model import TextModel
from shared.storage.memory import Cache

log = logging.getLogger(__name__)
REDIS_PREFIX = "clarion:explanation:"
ExplanationCache = Cache[Explanation]


def explanation_key(
    model_fingerprint: str, text: Input, options: ExplainOptions, computed_by: str = ""
) -> str:
    """Covers the algorithm's version, the model, the text and every option (SHAP's batch size
    included); not the pass size, which moves a number only in its last bits (engine.py).
    `computed_by`: what else makes the numbers (ClarionService._computed_by): the fast backend or
    the artifact's fingerprint; empty for "exact", whose keys stay as they were before it existed."""
    from shared.explanation.explainer import ALGORITHM_VERSION

    material = [ALGORITHM_VERSION, model_fingerprint, input_key(text), list(options.cache_key())]
    if computed_by:
        material.append(computed_by)
    return hashlib.sha256(json.dumps(material, default=str).encode()).hexdigest()


def fast_backend_of(model: TextModel) -> str:
    """What runs a "fast" pass, as precisely as its numbers differ: the graph (int8, or exact's fp32),
    or torch's half precision with its device and type (bf16 and fp16, CPU and GPU round apart)."""
    return getattr(model.fast_runner, "identity", None) or model.fast_backend


def classification_key(model_fingerprint: str, text: Input, long_text: str = "truncate") -> str:
    key = input_key(text)
    material = [model_fingerprint, key] if long_text == "truncate" else [model_fingerprint, key, long_text]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()


class RedisCache:
    """Explanations as JSON in Redis, expiring with job results.

    Each entry carries the algorithm's version (also in its key); an entry of another version, or
    one this version cannot decode, is a miss, never an error or a stale number."""

    def __init__(self, client: Any, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s

    def get(self, key: str) -> Explanation | None:
        import redis

        from shared.explanation.explainer import ALGORITHM_VERSION

        try:
            raw = self._client.get(REDIS_PREFIX + key)
        except redis.RedisError as exc:
            log.warning("explanation cache unavailable: %s", exc)
            return None
        if raw is None:
            return None
        try:
            entry = json.loads(raw)
            if entry.get("version") != ALGORITHM_VERSION:
                return None
            return Explanation.model_validate(entry["explanation"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring an undecodable explanation cache entry: %s", exc)
            return None

    def put(self, key: str, explanation: Explanation) -> None:
        import redis

        from shared.explanation.explainer import ALGORITHM_VERSION

        entry = {"version": ALGORITHM_VERSION, "explanation": explanation.model_dump(mode="json")}
        try:
            self._client.set(REDIS_PREFIX + key, json.dumps(entry), ex=self._ttl_s)
        except redis.RedisError as exc:
            log.warning("explanation cache unavailable: %s", exc)
