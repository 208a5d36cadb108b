"""Record bodies: `application/jsonlines` and `text/csv` requests, one text per record.

These are the formats of SageMaker Clarify clients and of Batch Transform with `SplitType=Line`:
- JSON Lines: one JSON object per line, the text in `features` (Clarify: `{"features": ["text"]}`),
  `text`, `data` or `inputs`; blank lines are skipped;
- CSV: one record per row (quoted texts may hold commas and line breaks), the text in the first column.
A record that cannot be read keeps its place with the reason, named by its line number, so that a
response can keep one output line per input record.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

JSON_LINES = (
    "application/jsonlines",  # SageMaker's name
    "application/jsonl",
    "application/x-jsonlines",
    "application/json-lines",
)
CSV = "text/csv"
RECORD_TYPES = (*JSON_LINES, CSV)
_TEXT_FIELDS = ("features", "text", "data", "inputs")


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line of the body where the record starts
    text: str | None
    problem: str | None = None  # why the record cannot be explained (then text is None)


def is_record_type(mimetype: str) -> bool:
    return mimetype in RECORD_TYPES


def decode_records(body: str, mimetype: str) -> list[Record]:
    return _csv_records(body) if mimetype == CSV else _json_lines_records(body)


def _json_lines_records(body: str) -> list[Record]:
    records = []
    for number, raw in enumerate(body.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, and Python's refusal of huge integers
            records.append(Record(number, None, f"line {number}: not JSON ({str(exc)[:100]})"))
            continue
        except RecursionError:
            records.append(Record(number, None, f"line {number}: not JSON (nested too deeply)"))
            continue
        text = _text_of(value)
        if text is None:
            fields = ", ".join(f'"{f}"' for f in _TEXT_FIELDS)
            problem = f"line {number}: a record must be a JSON object with a text in one of {fields}"
            records.append(Record(number, None, problem))
        else:
            records.append(Record(number, text))
    return records


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    for name in _TEXT_FIELDS:
        field = value.get(name)
        if isinstance(field, list) and len(field) == 1:  # Clarify: one feature, the text
            field = field[0]
        if isinstance(field, str):
            return field
    return None


def _csv_records(body: str) -> list[Record]:
    records = []
    reader = csv.reader(io.StringIO(body, newline=""))
    while True:
        number = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return records
        except csv.Error as exc:
            records.append(Record(number, None, f"line {number}: malformed CSV ({exc})"))
            continue
        if not row or not any(cell.strip() for cell in row):
            continue
        records.append(Record(number, row[0]))
