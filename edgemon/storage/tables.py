"""Detection rows as tables: CSV, BirdNET-compatible CSV, JSON Lines and Raven selection tables.

Shared by ``export-detections`` and ``classify``, so both write the same columns and time format.
A row is a mapping with (some of) the keys of ``COLUMNS`` (a missing key reads as empty) plus
``file_path``, the audio file's path when known. Times are the store's UTC text
('2024-05-01T06:00:00.000Z'), and ``start_local`` the start in the recorder's time zone (ISO 8601
with its offset, '2024-05-01T08:00:00.000+02:00'; empty without a time zone or a start time);
offsets in seconds; confidences rounded to ``CONFIDENCE_DECIMALS``.

CSV and Raven cells are what a spreadsheet opens: a text cell starting with = + - @ (or a tab or
carriage return) would run as a formula there, so it is written with a leading single quote, as
OWASP recommends for CSV. Control characters in text are written as escapes ('\\t', '\\r'): Raven
splits on tabs and knows no quoting, and Python's csv module leaves a lone CR unquoted, which
readers take for a line end. Numbers stay numbers (a negative offset is not an attack); JSON
Lines keep every value exact.
"""

from __future__ import annotations

import csv
import json
import re
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

from edgemon.utc import parse_utc

COLUMNS = ("id", "device_id", "source", "start_s", "end_s", "start_utc", "end_utc", "time_source",
           "clock_suspect", "label", "scientific_name", "common_name", "confidence", "votes",
           "bundle_id", "created_at", "clip_path", "clock_synced", "start_local", "score")
# JSON Lines name every value, so a column can join them; a CSV header must stay as it is, or a
# cursor could no longer append to the file an earlier edgemon wrote.
JSONL_COLUMNS = COLUMNS + ("clip_offset_s", "clip_end_s")
BIRDNET_COLUMNS = ("Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File")
# BirdNET-Analyzer's Raven columns, in its order, then ours (Raven keeps extra columns).
RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                 "Low Freq (Hz)", "High Freq (Hz)", "Common Name", "Species Code", "Confidence",
                 "Begin Path", "File Offset (s)", "Scientific Name", "Begin Date Time (UTC)")
RAVEN_HIGH_FREQ_HZ = 8000
RAVEN_SUFFIX = ".BirdNET.selection.table.txt"   # BirdNET-Analyzer's name: <stem>.BirdNET.selection.table.txt
CONFIDENCE_DECIMALS = 4
HALF_SHOWN_STEP = 0.5 * 10 ** -CONFIDENCE_DECIMALS   # a confidence this far below a value is shown as it
# onnxruntime's sums run in another order on another thread count or CPU: a bundle run again on
# the same recording moved confidences by 1e-4 (a review), and votes in their last digits.
NUMERIC_NOISE = 1e-3
# The calibrated confidence is the run's scores through the bundle's calibration, whose slope
# amplifies that noise: raw scores moved by 1.2e-4 on another thread count moved confidences by up
# to 0.0045, and 12 of 73 detections were delivered to an export cursor again (a review).
CONFIDENCE_NOISE = 1e-2
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def label_names(manifest: Mapping) -> dict[str, tuple[str | None, str | None]]:
    """label -> (scientific name, common name) from a bundle manifest's optional ``label_names``
    (``{"<label>": {"scientific": ..., "common": ...}}``); malformed or missing entries give none."""
    given = manifest.get("label_names") if isinstance(manifest, Mapping) else None
    names = {}
    for label, entry in (given.items() if isinstance(given, Mapping) else ()):
        if isinstance(entry, Mapping):
            scientific, common = entry.get("scientific"), entry.get("common")
            names[str(label)] = (scientific if isinstance(scientific, str) else None,
                                 common if isinstance(common, str) else None)
    return names


def local_time(utc_text: str | None, zone: zoneinfo.ZoneInfo | None) -> str | None:
    """The store's UTC text as ISO 8601 local time in ``zone`` with its offset, to the
    millisecond ('2024-05-01T08:00:00.000+02:00'); None without a zone or a time. The offset is
    the zone's at that instant, so summer and winter times each carry their own. None too for a
    time the calendar cannot hold there (a recorder's name at 9999-12-31, on UTC+8: the export
    ended in an OverflowError)."""
    if zone is None or not utc_text:
        return None
    try:
        return parse_utc(utc_text).astimezone(zone).isoformat(timespec="milliseconds")
    except OverflowError:
        return None


def with_local_time(rows: Iterable[dict], zone: zoneinfo.ZoneInfo | None) -> Iterator[dict]:
    """``rows`` each with ``start_local`` (see ``local_time``) added, streamed."""
    for row in rows:
        row["start_local"] = local_time(row.get("start_utc"), zone)
        yield row


def cell(value: Any) -> Any:
    """A value as a spreadsheet-safe cell: control characters escaped, then formula-like text
    given a leading single quote. Anything but text is returned as it is."""
    if not isinstance(value, str):
        return value
    value = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def confidence(row: Mapping, column: str = "confidence") -> float | None:
    return shown_confidence(row.get(column))


def shown_confidence(value: float | None) -> float | None:
    """A confidence as exports show it: to ``CONFIDENCE_DECIMALS`` places."""
    return None if value is None else round(float(value), CONFIDENCE_DECIMALS)


def _value(row: Mapping, column: str) -> Any:
    # confidence: calibrated when the bundle carries a calibration; score: the raw vote score
    return confidence(row, column) if column in ("confidence", "score") else row.get(column)


def species_names(row: Mapping) -> tuple[str, str]:
    """(scientific, common) name for BirdNET-style outputs. A label without names is written as
    both, as BirdNET itself writes its non-species classes ('Engine_Engine')."""
    label = row.get("label") or ""
    return row.get("scientific_name") or label, row.get("common_name") or label


def write_csv(f: TextIO, rows: Iterable[Mapping], columns: tuple[str, ...] = COLUMNS) -> int:
    """Header and one line per row; returns the number of rows."""
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(columns)
    count = 0
    for row in rows:
        writer.writerow([cell(_value(row, c)) for c in columns])
        count += 1
    return count


def audio_file(row: Mapping) -> tuple[Any, Any, Any]:
    """(path, start, end): the audio file that holds the detection and its seconds in that file,
    for outputs that open audio (BirdNET's ``File``, Raven's ``Begin Path``). A recording's
    detection: the recording, and ``start_s``/``end_s``. A live detection with a saved clip: the
    clip, from where it begins in the clip. A live detection without one is in no file: its
    source (``live:<device>``) and its stored times (Unix seconds)."""
    if not row.get("file_path") and row.get("clip_path") and row.get("clip_offset_s") is not None:   # export._raven_table
        start = round(row["clip_offset_s"], 3)
        end = row.get("clip_end_s")
        return row["clip_path"], start, round(start + row["end_s"] - row["start_s"] if end is None else end, 3)
    return row.get("file_path") or row.get("source"), row.get("start_s"), row.get("end_s")


def write_birdnet(f: TextIO, rows: Iterable[Mapping]) -> int:
    """BirdNET-Analyzer's CSV (``Start (s),End (s),Scientific name,Common name,Confidence,File``)."""
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(BIRDNET_COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(birdnet_row(row))
        count += 1
    return count


def birdnet_row(row: Mapping) -> list:
    """One row of BirdNET-Analyzer's CSV (``BIRDNET_COLUMNS``)."""
    scientific, common = species_names(row)
    path, start, end = audio_file(row)
    return [start, end, cell(scientific), cell(common), confidence(row), cell(path)]


def write_jsonl(f: TextIO, rows: Iterable[Mapping], columns: tuple[str, ...] = JSONL_COLUMNS) -> int:
    """One JSON object per line; ``votes`` (stored as JSON text) as an object."""
    count = 0
    for row in rows:
        record = {c: _value(row, c) for c in columns}
        if isinstance(record.get("votes"), str):
            try:
                record["votes"] = json.loads(record["votes"])
            except ValueError:
                pass   # not JSON (written by something else): keep the text rather than lose it
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


def raven_row(number: int, row: Mapping) -> list:
    """One Raven selection (``RAVEN_COLUMNS``); times in seconds from the start of the source."""
    scientific, common = species_names(row)
    path, start, end = audio_file(row)
    return [number, "Spectrogram 1", 1, start, end, 0, RAVEN_HIGH_FREQ_HZ,
            cell(common), cell(row.get("label")), confidence(row), cell(path), start, cell(scientific),
            row.get("start_utc") or ""]


def raven_writer(f: TextIO):
    return csv.writer(f, delimiter="\t", lineterminator="\n")


WRITERS = {"csv": write_csv, "birdnet": write_birdnet, "jsonl": write_jsonl}
