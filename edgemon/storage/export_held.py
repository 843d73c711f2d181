"""Rows a cursor export's file already holds, so that none is appended to it twice.

A database restored from a copy, or rebuilt after corruption, holds its cursors where the copy
left them (or holds none), and ``watch`` derives the rows since again from the recordings, under
new ids, over as many nights as the re-analysis takes. Each cursor export would then append to
its file, again, every row delivered before. So an export that appends to a csv or jsonl file
first reads the whole file (it copies it anyway) and leaves out each new row whose detection is
already there: matched by its natural key (device, source, start, label, bundle) and what the
analysis found (its end, and its confidence within numeric noise), which a rebuild re-derives
alike and which tells two recorders' rows in one shared file apart, and a detection changed since
from its old row; not by id, which a restored copy hands out again to other, new detections. The
file's keys are held as 64-bit hashes with their confidences.
BirdNET and Raven tables carry no device or bundle: a row of theirs is held when the file has one
alike in every other column (a Raven selection's number aside; the confidence within numeric
noise) and no other detection of the database shares its window and label (the export's
``alone``), since another bundle's detection there may be shown alike (1.0, say) and is then what
the file holds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from edgemon.storage import tables

# A detection and what its analysis found: one changed since it was delivered (its recording
# analysed again once it had grown, say) is a new row and is appended; one derived again alike is
# not. Its confidence is compared apart, within numeric noise (tables.CONFIDENCE_NOISE): derived
# again on another thread count or CPU it moves in the 3rd or 4th decimal (reviews).
KEY = ("device_id", "source", "start_s", "end_s", "label", "bundle_id")
SAME_CONFIDENCE = tables.CONFIDENCE_NOISE + tables.HALF_SHOWN_STEP
BIRDNET_CONFIDENCE = tables.BIRDNET_COLUMNS.index("Confidence")
RAVEN_CONFIDENCE = tables.RAVEN_COLUMNS.index("Confidence")

# hashed key -> the confidence the file holds under it (a tuple of them in the rare case of several)
Held = dict[int, "float | None | tuple[float | None, ...]"]


def _csv_text(value) -> str:
    """A value as ``csv.writer`` writes it through ``tables.cell``."""
    return "" if value is None else str(tables.cell(value))


def _json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _csv_keys(path: Path) -> Iterator[tuple[tuple, float | None]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        if not set(KEY) <= set(header):
            return
        at, conf = [header.index(c) for c in KEY], header.index("confidence") if "confidence" in header else None
        for row in rows:
            if len(row) == len(header):   # a line cut short (a copy interrupted) matches nothing
                yield tuple(row[i] for i in at), None if conf is None else _number(row[conf])


def _jsonl_keys(path: Path) -> Iterator[tuple[tuple, float | None]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield tuple(_json_text(record.get(c)) for c in KEY), _number(record.get("confidence"))


def _without(cells: tuple, at: int) -> tuple[tuple, float | None]:
    """A table row's key (every cell but its confidence, at ``at``) and its confidence."""
    return cells[:at] + cells[at + 1:], _number(cells[at]) if at < len(cells) else None


def _birdnet_keys(path: Path) -> Iterator[tuple[tuple, float | None]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        width = len(next(rows, []))
        yield from (_without(tuple(row), BIRDNET_CONFIDENCE) for row in rows if len(row) == width)


def _as_read(cells: list, delimiter: str = ",") -> tuple:
    """``cells`` as csv would read them back once written: the form a file's rows have."""
    text = io.StringIO()
    csv.writer(text, delimiter=delimiter, lineterminator="\n").writerow(cells)
    return tuple(next(csv.reader(io.StringIO(text.getvalue()), delimiter=delimiter)))


def key_of(write: Callable, row: Mapping) -> tuple[tuple, float | None]:
    """A new row's key and confidence, as ``held_keys`` reads the file's."""
    if write is tables.write_birdnet:
        return _without(_as_read(tables.birdnet_row(row)), BIRDNET_CONFIDENCE)
    text = _csv_text if write is tables.write_csv else _json_text
    return tuple(text(row.get(c)) for c in KEY), tables.confidence(row)


# per writer: the key and confidence of each of a file's rows
FILE_KEYS: dict[Callable, Callable[[Path], Iterator[tuple[tuple, float | None]]]] = {
    tables.write_csv: _csv_keys,
    tables.write_jsonl: _jsonl_keys,
    tables.write_birdnet: _birdnet_keys,
}


def _held(keys: Iterator[tuple[tuple, float | None]]) -> Held:
    held: Held = {}
    for key, confidence in keys:
        k = hash(key)
        if k not in held:
            held[k] = confidence
        else:
            earlier = held[k]
            held[k] = (*earlier, confidence) if isinstance(earlier, tuple) else (earlier, confidence)
    return held


def held_keys(write: Callable, path: Path) -> Held:
    """The rows of the file at ``path`` (written by ``write``): hashed keys, with confidences."""
    return _held(FILE_KEYS[write](path))


def held_selections(table_text: str) -> Held:
    """A Raven table's selections as ``held_keys`` gives a file's rows (every column but the
    number and the confidence as the key; header skipped)."""
    rows = csv.reader(io.StringIO(table_text), delimiter="\t")
    width = len(next(rows, []))
    return _held(_without(tuple(row[1:]), RAVEN_CONFIDENCE - 1) for row in rows if len(row) == width)


def is_held(held: Held, key: tuple, confidence: float | None) -> bool:
    """Whether the file holds a row of ``key`` at this confidence, numeric noise aside."""
    k = hash(key)
    if k not in held:
        return False
    found = held[k] if isinstance(held[k], tuple) else (held[k],)
    return any(c == confidence if c is None or confidence is None else abs(c - confidence) <= SAME_CONFIDENCE
               for c in found)


def selection_key(row: Mapping) -> tuple[tuple, float | None]:
    """A new row's key and confidence, as ``held_selections`` reads a table's."""
    return _without(_as_read(tables.raven_row(0, row), "\t")[1:], RAVEN_CONFIDENCE - 1)
