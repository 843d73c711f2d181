"""``edgemon classify``: the one-shot analyser. The watch pipeline once, no database."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.pipeline import Analyzer
from edgemon.recorder import recording_time

COLUMNS = ("file", "start_s", "end_s", "start_utc", "label", "confidence")


def classify_files(paths: list[Path], analyzer: Analyzer) -> tuple[list[dict], list[str]]:
    """Detections of every file, and one error line per file that could not be read."""
    rows, errors = [], []
    for path in paths:
        try:
            analysis = analyzer.analyse_file(path)
        except (EdgemonError, OSError) as exc:
            errors.append(str(exc))
            continue
        start = recording_time(Path(path)).start_utc
        for e in analysis.events:
            when = "" if start is None else (start + dt.timedelta(seconds=e.start_s)).isoformat(timespec="seconds")
            rows.append({"file": str(path), "start_s": e.start_s, "end_s": e.end_s, "start_utc": when,
                         "label": e.label, "confidence": round(e.confidence, 3)})
    return rows, errors


def format_rows(rows: list[dict], fmt: str) -> str:
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    table = [COLUMNS] + [tuple(str(r[c]) for c in COLUMNS) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table) + "\n"
