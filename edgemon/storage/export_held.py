"""Rows a cursor export's file already holds, when the database has gone back behind it.

A database restored from a copy, or rebuilt after corruption, holds its cursors where the copy
left them (or holds none), so the next cursor export would append to the file, again, every row
delivered since. Such rows are found by the detection's natural key (source, start, label,
bundle), which a rebuild re-derives; not by id, which a restored copy hands out again to other,
new detections. The file is read through only when its last row's id is at or above the first
new row's (the rows after a copy's cursor held ids from there on; a rebuild starts again at 1);
in the usual case, every row in it older than the new ones, only its last line is read. Only the
rows at or above that id are held in memory. BirdNET and Raven tables carry no id or bundle:
they are not checked.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from edgemon.storage import tables

KEY = ("source", "start_s", "label", "bundle_id")


def _csv_text(value) -> str:
    """A value as ``csv.writer`` writes it through ``tables.cell``."""
    return "" if value is None else str(tables.cell(value))


def _json_text(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _csv_records(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        for record in csv.DictReader(f):
            yield record, (lambda c, r=record: r.get(c) or "")


def _jsonl_records(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record, (lambda c, r=record: _json_text(r.get(c)))


# per writer: the file's records with a way to read their key, and a new row's key written alike
FORMATS: dict[Callable, tuple[Callable, Callable]] = {
    tables.write_csv: (_csv_records, _csv_text),
    tables.write_jsonl: (_jsonl_records, _json_text),
}


def _last_id(write: Callable, path: Path) -> int | None:
    """The id on the file's last line (cells hold no raw newline: ``tables.cell`` escapes them)."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - (1 << 16)))
        lines = [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        return None
    try:
        if write is tables.write_csv:
            return int(next(csv.reader([lines[-1]]))[0])
        return int(json.loads(lines[-1])["id"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def held_keys(write: Callable, path: Path, first_id: int) -> set[tuple] | None:
    """The keys of the rows in the file at ``path`` (written by ``write``) whose id is at least
    ``first_id``; None for a format without ids, or a file whose last row is older."""
    if write not in FORMATS:
        return None
    last = _last_id(write, path)
    if last is None or last < first_id:
        return None
    records, _ = FORMATS[write]
    held = set()
    for record, text in records(path):
        try:
            newer = int(record.get("id")) >= first_id
        except (TypeError, ValueError):
            continue
        if newer:
            held.add(tuple(text(c) for c in KEY))
    return held


def key_of(write: Callable, row: Mapping) -> tuple:
    """A new row's key, as the file's rows give theirs."""
    text = FORMATS[write][1]
    return tuple(text(row.get(c)) for c in KEY)
