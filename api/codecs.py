"""Content negotiation: turn an HTTP request body into an `Invocation`, and results into JSON bodies.

Accepted side by side:
- the seed's body `{"data": text | [texts], "explain": bool, ...options}`;
- the SageMaker Hugging Face toolkit body `{"inputs": ..., "parameters": {...}}`;
- `text/plain`: the whole body is one text;
- record bodies (`application/jsonlines`, `text/csv`): api/records.py.
JSON is read whatever the client claims when it claims nothing specific (no Content-Type,
`application/x-www-form-urlencoded` as `curl -d` sends, `application/octet-stream`, `*/*`).
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from typing import Any

from flask import Request

from shared.errors import InvalidRequest, UnsupportedMediaType
from shared.io.inputs import Input
from shared.io.schemas import HuggingFaceBody, InvocationParameters, SeedBody, parse_model
from shared.settings import Settings

_GENERIC_TYPES = {"", "application/x-www-form-urlencoded", "application/octet-stream", "*/*", "text/json"}


@dataclass(frozen=True)
class Invocation:
    """What a request asks for, whichever body format it used."""

    texts: list[Input]
    single: bool  # the request sent one text (or pair), so the response is one object, not a list
    parameters: InvocationParameters


def decode_invocation(
    request: Request, settings: Settings, defaults: dict[str, Any] | None = None
) -> Invocation:
    """`defaults`: options from a header (custom attributes), under the body's own."""
    mimetype = request.mimetype or ""
    body = request.get_data(cache=True)
    if mimetype == "text/plain":
        return decode_payload({"data": body_text(request)}, settings, defaults)
    if is_json_type(mimetype):
        return decode_payload(parse_json(body, _charset(request)), settings, defaults)
    raise UnsupportedMediaType(
        f"content type {mimetype!r} is not supported; send application/json, text/plain, "
        "application/jsonlines or text/csv"
    )


def is_json_type(mimetype: str) -> bool:
    """Whether a body of this type is read as JSON: JSON's own types, or one that claims nothing."""
    return mimetype in _GENERIC_TYPES or mimetype == "application/json" or mimetype.endswith("+json")


def json_body(request: Request, example: str) -> Any:
    """A body that can only be JSON (the KServe protocols'), read as /invocations reads one;
    `example`: the smallest valid body, for the message when it is empty."""
    mimetype = request.mimetype or ""
    if not is_json_type(mimetype):
        raise UnsupportedMediaType(f"content type {mimetype!r} is not supported; send application/json")
    return parse_json(request.get_data(cache=True), _charset(request), example)


def body_text(request: Request) -> str:
    """The whole body as text, in the request's charset (UTF-8 unless it says otherwise)."""
    return _decode_text(request.get_data(cache=True), _charset(request))


def _charset(request: Request) -> str:
    return request.mimetype_params.get("charset", "utf-8")


def decode_payload(payload: Any, settings: Settings, defaults: dict[str, Any] | None = None) -> Invocation:
    """Validate a parsed JSON payload in either the seed's or the Hugging Face shape."""
    if not isinstance(payload, dict):
        raise InvalidRequest('the body must be a JSON object with "data" (or "inputs")')
    if "data" in payload and "inputs" in payload:
        raise InvalidRequest('send either "data" or "inputs", not both')
    if defaults:
        if "inputs" in payload:
            parameters = payload.get("parameters", {})
            if isinstance(parameters, dict):
                payload = {**payload, "parameters": {**defaults, **parameters}}
        else:
            payload = {**defaults, **payload}
    if "inputs" in payload:
        hf: HuggingFaceBody = parse_model(HuggingFaceBody, payload, settings)
        return Invocation(_as_list(hf.inputs), not isinstance(hf.inputs, list), hf.parameters)
    if "data" not in payload:
        raise InvalidRequest('missing field "data" (or "inputs"): the text or list of texts to classify')
    seed: SeedBody = parse_model(SeedBody, payload, settings)  # a SeedBody is InvocationParameters
    return Invocation(_as_list(seed.data), not isinstance(seed.data, list), seed)


def _as_list(texts: Input | list[Input]) -> list[Input]:
    return list(texts) if isinstance(texts, list) else [texts]


def _decode_text(body: bytes, charset: str) -> str:
    """The body as text in the request's charset. Python's codec registry also holds transforms
    (base64, zlib, rot13, ...) and codecs that raise anything from UnicodeError to IndexError on
    crafted bytes: only text encodings are accepted, and any decoding failure is the client's."""
    try:
        if not codecs.lookup(charset)._is_text_encoding:
            raise LookupError(charset)
        return body.decode(charset)
    except LookupError:
        raise InvalidRequest(f"charset {charset[:40]!r} is not a text encoding Clarion knows") from None
    except (ValueError, TypeError, IndexError, OverflowError):  # UnicodeError is a ValueError
        raise InvalidRequest(f"the body is not valid {charset[:40]} text") from None


def parse_json(body: bytes, charset: str, example: str = '{"data": "text"}') -> Any:
    if not body.strip():
        raise InvalidRequest(f"the body is empty; send a JSON object such as {example}")
    try:
        return json.loads(_decode_text(body, charset))
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # Python refuses integers of more than 4,300 digits
        raise InvalidRequest("malformed JSON: a number has too many digits") from None
    except RecursionError:
        raise InvalidRequest("malformed JSON: nested too deeply") from None
