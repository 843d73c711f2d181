"""Rows a cursor export's file already holds, so that none is appended to it twice.

A database restored from a copy, or rebuilt after corruption, holds its cursors where the copy
left them (or holds none), and ``watch`` derives the rows since again from the recordings, under
new ids, over as many nights as the re-analysis takes. Each cursor export would then append to
its file, again, every row delivered before. So an export that appends to a csv or jsonl file
first reads the whole file (it copies it anyway) and leaves out each new row whose detection is
already there: matched by its natural key (device, source, start, label, bundle) and what the
analysis found (end, confidence as shown), which a rebuild re-derives alike and which tells two
recorders' rows in one shared file apart, and a detection changed since from its old row; not by id,
which a restored copy hands out again to other, new detections. The file's keys are held as
64-bit hashes: 7.9 MB for a season's 100,000 rows (tracemalloc), read in 0.29 s on the
development VM.
BirdNET and Raven tables carry no device or bundle: a row of theirs is held when the file has one
alike in every column (a Raven selection's number aside) and no other detection of the database
shares its window and label (the export's ``alone``), since another bundle's detection there may
be shown alike (1.0, say) and is then what the file holds.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from edgemon.storage import tables

# A detection and what its analysis found: one changed since it was delivered (its recording
# analysed again once it had grown, say) is a new row and is appended; one derived again alike is not.
KEY = ("device_id", "source", "start_s", "end_s", "label", "bundle_id", "confidence")


def _csv_text(value) -> str:
    """A value as ``csv.writer`` writes it through ``tables.cell``."""
    return "" if value is None else str(tables.cell(value))


def _json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _csv_keys(path: Path) -> Iterator[tuple]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        if not set(KEY) <= set(header):
            return
        at = [header.index(c) for c in KEY]
        for row in rows:
            if len(row) == len(header):   # a line cut short (a copy interrupted) matches nothing
                yield tuple(row[i] for i in at)


def _jsonl_keys(path: Path) -> Iterator[tuple]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield tuple(_json_text(record.get(c)) for c in KEY)


def _birdnet_keys(path: Path) -> Iterator[tuple]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        width = len(next(rows, []))
        yield from (tuple(row) for row in rows if len(row) == width)


def _as_read(cells: list, delimiter: str = ",") -> tuple:
    """``cells`` as csv would read them back once written: the form a file's rows have."""
    text = io.StringIO()
    csv.writer(text, delimiter=delimiter, lineterminator="\n").writerow(cells)
    return tuple(next(csv.reader(io.StringIO(text.getvalue()), delimiter=delimiter)))


def _key(write: Callable, row: Mapping) -> tuple:
    if write is tables.write_birdnet:
        return _as_read(tables.birdnet_row(row))
    text = _csv_text if write is tables.write_csv else _json_text
    return tuple(text(tables.confidence(row) if c == "confidence" else row.get(c)) for c in KEY)


# per writer: the keys of a file's rows
FILE_KEYS: dict[Callable, Callable[[Path], Iterator[tuple]]] = {
    tables.write_csv: _csv_keys,
    tables.write_jsonl: _jsonl_keys,
    tables.write_birdnet: _birdnet_keys,
}


def held_keys(write: Callable, path: Path) -> set[int]:
    """The hashed keys of every row in the file at ``path`` (written by ``write``)."""
    return {hash(key) for key in FILE_KEYS[write](path)}


def key_of(write: Callable, row: Mapping) -> int:
    """A new row's hashed key, as ``held_keys`` gives the file's."""
    return hash(_key(write, row))


def held_selections(table_text: str) -> set[int]:
    """The hashed keys of a Raven table's selections (every column but the number; header skipped)."""
    rows = csv.reader(io.StringIO(table_text), delimiter="\t")
    width = len(next(rows, []))
    return {hash(tuple(row[1:])) for row in rows if len(row) == width}


def selection_key(row: Mapping) -> int:
    """A new row's hashed key, as ``held_selections`` gives a table's."""
    return hash(_as_read(tables.raven_row(0, row), "\t")[1:])
