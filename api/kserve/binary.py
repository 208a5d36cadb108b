"""The binary tensor data extension that Triton defined and KServe and tritonclient speak: a body is a
JSON header of `Inference-Header-Content-Length` bytes, then each binary tensor's bytes in order; a
BYTES tensor is its elements one after another, each a 4-byte little-endian length and its bytes;
an FP32 tensor is its values as little-endian 4-byte floats, row-major."""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

from shared.errors import InvalidRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, header_length: str) -> tuple[bytes, bytes]:
    """The JSON header and the binary data after it."""
    if not re.fullmatch(r"\s*\d{1,12}\s*", header_length):
        raise InvalidRequest(
            f"{HEADER_LENGTH} must be the JSON header's size in bytes, not {header_length[:40]!r}"
        )
    size = int(header_length)
    if size > len(body):
        raise InvalidRequest(f"{HEADER_LENGTH} is {size}, but the body has only {len(body)} bytes")
    return body[:size], body[size:]


def bytes_elements(raw: bytes, what: str) -> list[bytes]:
    """A BYTES tensor's elements."""
    elements: list[bytes] = []
    at = 0
    while at < len(raw):
        if at + _LENGTH.size > len(raw):
            raise InvalidRequest(
                f"{what}: the binary data ends inside element {len(elements)}'s 4-byte length"
            )
        (size,) = _LENGTH.unpack_from(raw, at)
        at += _LENGTH.size
        if at + size > len(raw):
            raise InvalidRequest(
                f"{what}: element {len(elements)} claims {size} bytes, but {len(raw) - at} are left"
            )
        elements.append(raw[at : at + size])
        at += size
    return elements


def bytes_tensor(elements: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def fp32_tensor(values: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)
