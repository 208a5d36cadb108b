"""Texts read from records, one text (or text pair) per record: JSON Lines and CSV.

One reader for both places that take records: the HTTP record bodies (api/records.py: SageMaker
Clarify and Batch Transform) and the files of `clarion explain` (shared/cli/explain.py). A record that
cannot be read keeps its place, with the reason, so that every caller can answer line by line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import InvalidRequest
from shared.io.inputs import TextPair
from shared.io.schemas import PAIRS_UNSUPPORTED, is_pair

EMPTY = "empty line"
PAIR_RECORD = 'a text pair record is {{"text": <text>, "{}": <text>}} (or Clarify\'s two features)'


@dataclass(frozen=True)
class Record:
    line: int  # 1-based line where the record starts (a quoted CSV cell may span lines)
    text: str | TextPair | None  # a TextPair only where the reader was asked for pairs
    problem: str | None = None  # why no text could be read (then text is None); EMPTY for a blank line
    label: str | None = None  # the true label, where the input names a field or column holding it


def json_lines(
    lines: Iterable[str],
    fields: Sequence[str],
    label_field: str | None = None,
    pairs: bool = False,
    pair_field: str = "text_pair",
) -> Iterator[Record]:
    """A record per line: a JSON object with a string in the first of `fields` it holds (a list of
    one string counts: Clarify sends `{"features": ["text"]}`), or a JSON string. `label_field`:
    the true label's field (a string or a number; absent or null: no label). `pairs`: a record with
    a `pair_field` beside its text (or two features) is a TextPair; otherwise such a record is refused."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            yield Record(number, None, EMPTY)
            continue
        try:
            value = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError, and Python's refusal of huge integers
            yield Record(number, None, f"not JSON ({str(exc)[:100]})")
            continue
        except RecursionError:
            yield Record(number, None, "not JSON (nested too deeply)")
            continue
        if _holds_a_pair(value, fields, pair_field):
            pair = _pair_of(value, fields, pair_field) if pairs else None
            if pair is not None:
                yield Record(number, pair, label=_label(value, label_field))
            else:
                yield Record(number, None, PAIR_RECORD.format(pair_field) if pairs else PAIRS_UNSUPPORTED)
            continue
        text = _text_of(value, fields)
        if text is None:
            names = [f'"{name}"' for name in fields]
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
            yield Record(number, None, f"no string field {listed}")
        else:
            yield Record(number, text, label=_label(value, label_field))


def json_pair_lines(
    lines: Iterable[str], fields: Sequence[str], pair_field: str, label_field: str | None = None
) -> Iterator[Record]:
    """Records that must each be a text pair, its second text in `pair_field` (an analysis or
    `clarion explain` told the pair's field): a record of one text is that record's error, never
    its first text's answer."""
    for record in json_lines(lines, fields, label_field, pairs=True, pair_field=pair_field):
        if isinstance(record.text, str):
            record = Record(record.line, None, f'no string field "{pair_field}" beside the text')
        yield record


def _label(value: Any, label_field: str | None) -> str | None:
    label = value.get(label_field) if label_field and isinstance(value, dict) else None
    return None if label is None else str(label)


def _holds_a_pair(value: Any, fields: Sequence[str], pair_field: str) -> bool:
    """A record of a text pair: a text_pair beside the text, or (Clarify) two feature columns."""
    if not isinstance(value, dict):
        return False
    if value.get(pair_field) is not None:
        return True
    return any(is_pair(value.get(name)) for name in fields)


def _pair_of(value: dict[str, Any], fields: Sequence[str], pair_field: str) -> TextPair | None:
    second = value.get(pair_field)
    for name in fields:
        field = value.get(name)
        if is_pair(field):  # Clarify's two feature columns
            return TextPair(field[0], field[1])
        if isinstance(field, str):
            return TextPair(field, second) if isinstance(second, str) else None
    return None


def _text_of(value: Any, fields: Sequence[str]) -> str | None:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    for name in fields:
        field = value.get(name)
        if isinstance(field, list) and len(field) == 1:
            field = field[0]
        if isinstance(field, str):
            return field
    return None


def csv_records(
    reader: Any,
    column: int,
    column_name: str | None = None,
    label_column: int | None = None,
    pair_column: int | None = None,
    pair_name: str | None = None,
) -> Iterator[Record]:
    """A record per row of a `csv.reader` (past any header the caller read), the text in `column`
    (and the true label in `label_column`, when given: an empty cell is no label). `pair_column`:
    each record is a TextPair, its second text in that column; a row without one is that record's
    error, never its first text alone."""
    while True:
        number = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(number, None, f"malformed CSV ({exc})")
            continue
        if not any(cell.strip() for cell in row):
            yield Record(number, None, EMPTY)
        elif len(row) <= column:
            yield Record(number, None, f"no value in column {column_name or column + 1!r}")
        elif pair_column is not None and (len(row) <= pair_column or not row[pair_column].strip()):
            yield Record(number, None, f"no text_pair in column {pair_name or pair_column + 1!r}")
        else:
            label = row[label_column].strip() if label_column is not None and label_column < len(row) else ""
            text = row[column] if pair_column is None else TextPair(row[column], row[pair_column])
            yield Record(number, text, label=label or None)


def csv_table(
    lines: Iterable[str],
    column: str,
    label: str | None = None,
    delimiter: str = ",",
    source: str = "input",
    pair: str | None = None,
) -> Iterator[Record]:
    """A CSV table with a header row: the text in the column named `column`, the true label in
    `label`'s, and with `pair` each record's second text (a TextPair) in that column. A missing
    column is the input's error, raised before any record."""
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InvalidRequest(f"{source}: unreadable CSV header: {exc}") from None
    for name in (column, label, pair):
        if name is not None and name not in header:
            raise InvalidRequest(f"{source}: no column {name!r} (columns: {header[:20]})")
    if pair is not None and pair == column:
        raise InvalidRequest(f"{source}: the text_pair column {pair!r} is the text's own")
    label_column = None if label is None else header.index(label)
    pair_column = None if pair is None else header.index(pair)
    yield from csv_records(reader, header.index(column), column, label_column, pair_column, pair)
