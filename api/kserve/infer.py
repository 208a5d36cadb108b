"""The V2 infer exchange: what a request asks (its BYTES input `text`, and `text_pair` beside it for
text pairs; Clarion's options; the outputs it wants and in which form), and the response's output
tensors, in JSON or with the binary tensor data extension (api/kserve/binary.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

import numpy as np
from flask import Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.codecs import is_json_type, json_body, parse_json
from api.kserve.binary import HEADER_LENGTH, bytes_elements, bytes_tensor, fp32_tensor, split_body
from shared.errors import InvalidRequest, UnsupportedMediaType
from shared.io.inputs import Input, TextPair
from shared.io.schemas import WholeNumber, parse_model
from shared.settings import Settings

INPUT = "text"
PAIR_INPUT = "text_pair"  # each row's second text (NLI, cross-encoders): the same shape as `text`
InputName = Literal["text", "text_pair"]
OutputName = Literal["scores", "label", "attributions"]
OUTPUTS: tuple[str, ...] = get_args(OutputName)
ATTRIBUTIONS = "attributions"
_EXAMPLE = '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a text"]}]}'


class _Strict(BaseModel):
    # As Clarion's own bodies: "1" is not a number, and a misspelt field is an error, not ignored.
    # An optional field is absent, never null: its None is a default that is not validated, so a
    # null sent is refused as the document says.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


Count = Annotated[int, Field(ge=0), WholeNumber]


class InputParameters(_Strict):
    binary_data_size: Count = None  # type: ignore[assignment]


class TensorInput(_Strict):
    name: InputName
    shape: list[Annotated[int, WholeNumber]]
    datatype: Literal["BYTES"]
    data: list[str] = None  # type: ignore[assignment]  # absent when the texts come as binary data
    parameters: InputParameters = InputParameters()


class OutputParameters(_Strict):
    binary_data: bool = None  # type: ignore[assignment]


class RequestedOutput(_Strict):
    name: OutputName
    parameters: OutputParameters = OutputParameters()


class InferenceRequest(_Strict):
    id: str = None  # type: ignore[assignment]
    # KServe's client names the model (and version) in the body too; the path decides which it is.
    model_name: str = None  # type: ignore[assignment]
    model_version: str = None  # type: ignore[assignment]
    parameters: dict[str, Any] = {}
    inputs: Annotated[list[TensorInput], Field(min_length=1, max_length=2)]
    outputs: list[RequestedOutput] = None  # type: ignore[assignment]


@dataclass(frozen=True)
class InferCall:
    """What one infer request asks."""

    id: str | None
    texts: list[Input]  # each row's text, or its text pair when a text_pair input came beside it
    options: dict[str, Any]  # Clarion's options: the request's parameters less the protocol's own
    outputs: tuple[RequestedOutput, ...] | None  # None: the default ones
    binary_output: bool  # the request's binary_data_output: every output's form unless it says its own

    def answered(self, defaults: Sequence[str]) -> dict[str, bool]:
        """The outputs to answer, in order, each with whether it goes as binary data: the ones the
        request names (each once), else the defaults."""
        if self.outputs is None:
            return {name: self.binary_output for name in defaults}
        answered: dict[str, bool] = {}
        for output in self.outputs:
            binary = output.parameters.binary_data
            answered.setdefault(output.name, self.binary_output if binary is None else binary)
        return answered


def decode_infer(request: Request, settings: Settings) -> InferCall:
    """A request in JSON, or with the binary extension when it carries Inference-Header-Content-Length."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # tritonclient compresses when asked; Clarion reads plain bodies
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:40]!r} is not supported; send the body as is"
        )
    header_length = request.headers.get(HEADER_LENGTH)
    if header_length is None:
        document, binary = json_body(request, _EXAMPLE), None
    else:
        if not is_json_type(request.mimetype or ""):
            raise UnsupportedMediaType(
                f"content type {request.mimetype!r} is not supported; send application/octet-stream"
            )
        header, binary = split_body(request.get_data(cache=True), header_length)
        document = parse_json(header, "utf-8", _EXAMPLE)
    if not isinstance(document, dict):
        raise InvalidRequest(f"the body must be a JSON object such as {_EXAMPLE}")
    parsed: InferenceRequest = parse_model(InferenceRequest, document, settings)
    options = dict(parsed.parameters)
    binary_output = options.pop("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidRequest("parameters.binary_data_output: must be true or false")
    texts = _rows(parsed.inputs, binary)
    outputs = None if parsed.outputs is None else tuple(parsed.outputs)
    return InferCall(parsed.id, texts, options, outputs, binary_output)


def _rows(tensors: Sequence[TensorInput], binary: bytes | None) -> list[Input]:
    """Each row's input: the `text` input's texts, each paired with the `text_pair` input's text of
    the same row when that input is sent (the model's metadata lists it where pairs are taken)."""
    names = [tensor.name for tensor in tensors]
    if names.count(INPUT) != 1 or len(set(names)) != len(names):
        raise InvalidRequest(
            f"inputs: one input {INPUT!r}, and for text pairs one input {PAIR_INPUT!r} beside it; got {names}"
        )
    parts = _binary_parts(tensors, binary)
    columns = {tensor.name: _texts(tensor, part) for tensor, part in zip(tensors, parts, strict=True)}
    texts, second = columns[INPUT], columns.get(PAIR_INPUT)
    if second is None:
        return list(texts)
    if len(second) != len(texts):
        raise InvalidRequest(
            f"input {PAIR_INPUT!r} holds {len(second)} texts and input {INPUT!r} {len(texts)}: a text pair "
            "per row needs one second text per text (the same shape)"
        )
    return [TextPair(text, pair) for text, pair in zip(texts, second, strict=True)]


def _binary_parts(tensors: Sequence[TensorInput], binary: bytes | None) -> list[bytes | None]:
    """Each input's binary data: the bytes after the JSON header, cut in the inputs' order by their
    binary_data_size (None for an input sent in JSON, or when no binary data came)."""
    if binary is None:
        return [None] * len(tensors)
    sizes = [tensor.parameters.binary_data_size for tensor in tensors]
    if all(size is None for size in sizes):
        if binary:
            raise InvalidRequest(
                f"{len(binary)} bytes follow the JSON header, but no input has binary_data_size"
            )
        return [None] * len(tensors)
    parts: list[bytes | None] = []
    start = 0
    for tensor, size in zip(tensors, sizes, strict=True):
        if size is None:
            parts.append(None)
            continue
        if start + size > len(binary):
            raise InvalidRequest(
                f"input {tensor.name!r}: binary_data_size is {size}, but {len(binary) - start} bytes "
                "follow the JSON header" + (" after the inputs before it" if start else "")
            )
        parts.append(binary[start : start + size])
        start += size
    if start != len(binary):
        raise InvalidRequest(
            f"the inputs' binary_data_size add up to {start}, but {len(binary)} bytes follow the JSON header"
        )
    return parts


def _texts(tensor: TensorInput, binary: bytes | None) -> list[str]:
    """The input's texts, from its JSON data or its binary data; its shape must be [n] for n texts,
    as the model's metadata says."""
    name = tensor.name
    if tensor.parameters.binary_data_size is None:
        if tensor.data is None:
            raise InvalidRequest(f"input {name!r} has no data: send its texts in data (or as binary data)")
        texts = tensor.data
    else:
        if binary is None:
            raise InvalidRequest(f"input {name!r}: binary data needs the {HEADER_LENGTH} header")
        if tensor.data is not None:
            raise InvalidRequest(f"input {name!r}: send its texts in data or as binary data, not both")
        texts = [
            _utf8(element, i, name) for i, element in enumerate(bytes_elements(binary, f"input {name!r}"))
        ]
    if tensor.shape != [len(texts)]:
        raise InvalidRequest(
            f"input {name!r}: shape {tensor.shape} does not match its data: {len(texts)} texts have "
            f"shape [{len(texts)}]"
        )
    return texts


def _utf8(element: bytes, index: int, name: str) -> str:
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"input {name!r}: element {index} is not UTF-8 text") from None


@dataclass(frozen=True)
class OutputTensor:
    """An output's values, flat and row-major."""

    name: str
    datatype: Literal["FP32", "BYTES"]
    shape: list[int]
    data: list[float] | list[str]
    parameters: dict[str, str] = field(default_factory=dict)  # the output's own (zero-shot: its labels)

    @classmethod
    def fp32(cls, name: str, shape: list[int], values: Sequence[float]) -> OutputTensor:
        """Values rounded to float32, so that the JSON and the binary forms hold the same numbers."""
        return cls(name, "FP32", shape, [float(v) for v in np.asarray(values, dtype=np.float32)])

    @classmethod
    def strings(cls, name: str, values: Sequence[str]) -> OutputTensor:
        return cls(name, "BYTES", [len(values)], list(values))

    def raw(self) -> bytes:
        if self.datatype == "FP32":
            return fp32_tensor(self.data)  # type: ignore[arg-type]
        return bytes_tensor([str(text).encode("utf-8") for text in self.data])


def infer_response(
    model_name: str, response_id: str, outputs: Sequence[tuple[OutputTensor, bool]]
) -> Response:
    """The response: JSON, or when an output goes as binary data, the JSON header and its bytes."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, binary in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if tensor.parameters:
            entry["parameters"] = dict(tensor.parameters)
        if binary:
            blobs.append(tensor.raw())
            entry["parameters"] = {**entry.get("parameters", {}), "binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = tensor.data
        described.append(entry)
    # ASCII: an id is echoed as sent, and JSON can carry a lone surrogate that UTF-8 cannot.
    header = json.dumps(
        {"model_name": model_name, "id": response_id, "outputs": described}, separators=(",", ":")
    ).encode("ascii")
    if not blobs:
        return Response(header, mimetype="application/json")
    response = Response(header + b"".join(blobs), mimetype="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(header))
    return response
