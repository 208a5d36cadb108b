"""Record bodies: `application/jsonlines` and `text/csv` requests, one text per record.

These are the formats of SageMaker Clarify clients and of Batch Transform with `SplitType=Line`:
- JSON Lines: one JSON object per line, the text in `features` (Clarify: `{"features": ["text"]}`),
  `text`, `data` or `inputs`; blank lines are skipped;
- CSV: one record per row (quoted texts may hold commas and line breaks), the text in the first column,
  and with the custom attribute `pair_column=<n>` each record's second text (a text pair) in column n.
A record that cannot be read keeps its place with the reason, named by its line number, so that a
response can keep one output line per input record. A body with no record at all (only blank lines;
for CSV, only whitespace, commas and double quotes) holds nothing to answer: the OpenAPI document
says so with the patterns below.
"""

from __future__ import annotations

import csv
import io
import re

from api.negotiation import CSV, JSON_LINES, PAIR_COLUMN
from shared.errors import InvalidRequest
from shared.io.records import EMPTY, Record, csv_records, json_lines
from shared.io.schemas import NON_BLANK, WHITESPACE

# Every name JSON Lines goes by (SageMaker's first); a response is always in SageMaker's.
JSON_LINES_TYPES = (JSON_LINES, "application/jsonl", "application/x-jsonlines", "application/json-lines")
RECORD_TYPES = (*JSON_LINES_TYPES, CSV)
_TEXT_FIELDS = ("features", "text", "data", "inputs")
# What a record body needs to hold a record: JSON Lines, a line that is not blank; CSV, a character
# that is not whitespace, a comma or a double quote (every other character is part of a cell, so
# its row is a record; without one, every cell is blank or quotes alone).
JSON_LINES_RECORD = NON_BLANK
CSV_RECORD = f'[^{WHITESPACE},"]'
_CSV_RECORD = re.compile(CSV_RECORD)


def is_record_type(mimetype: str) -> bool:
    return mimetype in RECORD_TYPES


def decode_records(body: str, mimetype: str, pair_column: int | None = None) -> list[Record]:
    """The body's records, blank lines skipped; a problem names its line. `pair_column`: a CSV
    body's column (1-based, as its messages count) holding each record's text_pair."""
    if mimetype == CSV:
        if not _CSV_RECORD.search(body):
            return []
        reader = csv.reader(io.StringIO(body, newline=""))
        records = csv_records(reader, column=0, pair_column=None if pair_column is None else pair_column - 1)
    else:
        if pair_column is not None:
            raise InvalidRequest(
                f"{PAIR_COLUMN} names a CSV body's column: a JSON Lines record sends its second text "
                'as {"text": ..., "text_pair": ...} (or Clarify\'s {"features": [<text>, <text>]})'
            )
        # Lines end at "\n" only (as Batch Transform splits them): str.splitlines would also cut
        # at U+2028 and the like, which JSON strings may hold unescaped.
        records = json_lines((line.rstrip("\r") for line in body.split("\n")), _TEXT_FIELDS, pairs=True)
    return [
        r if r.problem is None else Record(r.line, None, f"line {r.line}: {r.problem}")
        for r in records
        if r.problem != EMPTY
    ]
