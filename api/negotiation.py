"""Headers: what the client accepts, the options it sends in SageMaker's custom attributes, the
request id every response carries, and the Idempotency-Key of a submit."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Request

from shared.errors import InvalidRequest, NotAcceptable
from shared.jobs.job import Idempotency

JSON = "application/json"
JSON_LINES = "application/jsonlines"
CSV = "text/csv"
HTML = "text/html"
_ALIASES = {"application/jsonl": JSON_LINES, "application/x-jsonlines": JSON_LINES}
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
_VISIBLE_ASCII = re.compile(r"[\x20-\x7e]*")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # on the answer to a submit whose key made its job before
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def response_type(request: Request, offered: tuple[str, ...]) -> str:
    """The offered type the client prefers; the first offered when it says nothing (or `*/*`)."""
    accept = request.accept_mimetypes
    if not accept:
        return offered[0]
    candidates = [*offered, *(alias for alias, target in _ALIASES.items() if target in offered)]
    best = accept.best_match(candidates)
    if best is None:
        raise NotAcceptable(
            f"cannot answer in {request.headers.get('Accept', '')[:100]!r}; supported: {', '.join(offered)}"
        )
    return _ALIASES.get(best, best)


# Options a client may send as `X-Amzn-SageMaker-Custom-Attributes: explain=true;max_evals=300;...`,
# with the type each value is read as.
_OPTION_TYPES: dict[str, str] = {
    "explain": "bool",
    "async": "bool",
    "max_evals": "int",
    "time_budget": "float",
    "seed": "int",
    "batch_size": "int",
    "output": "str",
    "granularity": "str",
    "long_text": "str",
    "precision": "str",
    "masking": "str",
    "faithfulness": "bool",
    "labels": "labels",
}
# Not an explanation option but how a CSV body is read: `pair_column=2` takes each row's second text
# (a text pair) from its second column (1-based: the first column is the text).
PAIR_COLUMN = "pair_column"


@dataclass(frozen=True)
class CustomAttributes:
    """The custom-attributes header: the options Clarion reads, and every other part as the client
    wrote it (SageMaker forwards the header verbatim, and clients carry trace ids and their own
    metadata there: Clarion passes those back untouched)."""

    options: dict[str, Any] = field(default_factory=dict)
    others: tuple[str, ...] = ()
    pair_column: int | None = None  # a CSV body's text_pair column (PAIR_COLUMN)


def custom_attributes(request: Request) -> CustomAttributes:
    """The header's parts; a malformed value of an option Clarion reads is a 400."""
    raw = request.headers.get(CUSTOM_ATTRIBUTES)
    if raw is None:
        return CustomAttributes()
    if len(raw) > 1024 or not _VISIBLE_ASCII.fullmatch(raw):
        raise InvalidRequest(f"{CUSTOM_ATTRIBUTES}: at most 1,024 visible ASCII characters")
    options: dict[str, Any] = {}
    others: list[str] = []
    pair_column = None
    for part in filter(None, (p.strip() for p in raw.split(";"))):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if name == "request_id":  # our own echo, sent back by a client: not an option
            continue
        if name == PAIR_COLUMN:
            pair_column = _column(value)
        elif name not in _OPTION_TYPES:
            others.append(part)
        elif not sep:
            raise InvalidRequest(f"{CUSTOM_ATTRIBUTES}: {name[:40]!r} needs a value ({name}=...)")
        else:
            options[name] = _read(name, value)
    return CustomAttributes(options, tuple(others), pair_column)


def _column(value: str) -> int:
    if not re.fullmatch(r"\d{1,6}", value) or int(value) < 2:
        raise InvalidRequest(
            f"{CUSTOM_ATTRIBUTES}: {PAIR_COLUMN} is the number of a CSV body's column holding each "
            f"text_pair, 2 or more (column 1 is the text), not {value[:40]!r}"
        )
    return int(value)


def custom_attribute_options(request: Request) -> dict[str, Any]:
    """The explanation options in the custom-attributes header (empty without the header)."""
    return body_options(custom_attributes(request))


def body_options(attributes: CustomAttributes) -> dict[str, Any]:
    """The header's explanation options for a JSON or text body, which has no CSV column to read a
    text_pair from."""
    if attributes.pair_column is not None:
        raise InvalidRequest(
            f"{CUSTOM_ATTRIBUTES}: {PAIR_COLUMN} reads a CSV body's column; a JSON body sends a text "
            'pair as {"text": ..., "text_pair": ...}'
        )
    return attributes.options


def _read(name: str, value: str) -> Any:
    kind = _OPTION_TYPES[name]
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise InvalidRequest(f"{CUSTOM_ATTRIBUTES}: {name} must be true or false, not {value[:40]!r}")
        return value.lower() == "true"
    if kind == "int":
        if not re.fullmatch(r"-?\d{1,12}", value):
            raise InvalidRequest(f"{CUSTOM_ATTRIBUTES}: {name} must be an integer, not {value[:40]!r}")
        return int(value)
    if kind == "float":
        if not re.fullmatch(r"\d{1,6}(\.\d{1,6})?", value):
            raise InvalidRequest(
                f"{CUSTOM_ATTRIBUTES}: {name} must be a number of seconds, not {value[:40]!r}"
            )
        return float(value)
    if kind == "labels":  # all, predicted, or names separated by |
        return value if value in ("all", "predicted") else [label for label in value.split("|") if label]
    return value


def echo_attributes(request_id: str, attributes: CustomAttributes) -> str:
    """The custom-attributes value of a response: the request id, the options the header set, and
    the client's own parts as it sent them."""
    parts = [f"request_id={request_id}"]
    for name, value in attributes.options.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):
            value = "|".join(value)
        parts.append(f"{name}={value}")
    if attributes.pair_column is not None:
        parts.append(f"{PAIR_COLUMN}={attributes.pair_column}")
    parts += attributes.others
    return ";".join(parts)[:1024]


def request_id(request: Request) -> str:
    """The client's X-Request-Id when it is a sane token, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def idempotency(request: Request, owner: str | None) -> Idempotency | None:
    """The submit's Idempotency-Key (visible ASCII, at most 255 characters), with a digest of what
    the request asks for: its path, query, media type, SageMaker's options and body. None without
    the header."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    key = key.strip()
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidRequest(f"{IDEMPOTENCY_KEY}: 1 to 255 visible ASCII characters")
    digest = hashlib.sha256()
    for part in (request.path, request.query_string.decode("latin-1"), request.mimetype,
                 request.headers.get(CUSTOM_ATTRIBUTES, "")):  # fmt: skip
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(request.get_data(cache=True))
    return Idempotency(key=key, owner=owner, request=digest.hexdigest())
