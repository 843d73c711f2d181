"""``edgemon classify``: the one-shot analyser. The watch pipeline once, no database.

Its CSV is export's (``edgemon.storage.tables``): the same columns and UTC time text, so a file
classified by hand and the daemon's export of it can be read by one script; the columns a
database gives (id, device, stored time, clip) stay empty.
"""

from __future__ import annotations

import io
import logging
import os
import stat
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

from edgemon.analysis import audio
from edgemon.analysis.analyzer import Analyzer
from edgemon.errors import AudioError, EdgemonError
from edgemon.files.completeness import header_consistent
from edgemon.files.directory import iter_audio, skipped_because
from edgemon.files.recordings import recording_time
from edgemon.files.triggered import silences_of
from edgemon.safetext import shown
from edgemon.storage import tables
from edgemon.utc import utc_iso

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("source", "start_s", "end_s", "start_utc", "label", "common_name", "confidence")


def classify_files(paths: list[Path], analyzer: Analyzer, zone: zoneinfo.ZoneInfo | None = None,
                   clock: zoneinfo.ZoneInfo | None = None) -> tuple[list[dict], list[str]]:
    """Detections of every file as export rows (``tables.COLUMNS``; ``start_local`` in ``zone``,
    the recorder's time zone, when given; names without an offset read in ``clock``, as watch
    reads them), and one error line per file that could not be read, naming it."""
    names = tables.label_names(analyzer.bundle.manifest)
    rows, errors = [], []
    for path, source in _audio_files(paths, errors):
        try:
            _check_readable(Path(path))
            whole, why = header_consistent(path)
            if not whole and "not a RIFF" not in why:   # as watch notes it; not RIFF at all: the decoder says why
                log.warning("%s: header inconsistent (%s); read as far as it goes", shown(str(path)), shown(why))
            analysis = analyzer.analyse_file(path)
            when = recording_time(Path(path), clock=clock)
            left_out = silences_of(path)
            note = audio.not_said_yet(analysis.note)
            if note:   # read, but not as usual (a header never finalised, a cut FLAC)
                log.warning("%s: %s", shown(str(path)), shown(note))
            if when.source == "mtime":   # the table shows no time source: said, as watch says it
                log.warning("%s: no start time in its name or header: timed by its modification time (%s); "
                            "recorders' names [PREFIX_]YYYYMMDD_HHMMSS.WAV give the real time (the stamp must "
                            "end the name)", shown(str(path)), when.detail)
        except (EdgemonError, OSError) as exc:
            errors.append(str(exc) if isinstance(exc, EdgemonError) else f"{path}: {exc.strerror or exc}")
            continue

        for e in analysis.events:
            scientific, common = names.get(e.label, (None, None))
            start, end = left_out.event_times(when.start_utc, e.start_s, e.end_s)   # as watch stores them
            rows.append({"source": source, "file_path": str(path), "start_s": e.start_s, "end_s": e.end_s,
                         "start_utc": start and utc_iso(start), "end_utc": end and utc_iso(end),
                         "time_source": when.source,
                         "clock_suspect": int(when.suspect), "label": e.label, "scientific_name": scientific,
                         "common_name": common, "confidence": e.confidence, "score": e.score, "votes": e.votes,
                         "bundle_id": analyzer.bundle.bundle_id})
    return list(tables.with_local_time(rows, zone)), errors


def _audio_files(paths: list[Path], errors: list[str]) -> Iterator[tuple[Path, str]]:
    """The files given, a directory's audio files in name order in its place (as watch finds them,
    recursively); a directory holding none is an error line, and its files in other audio formats
    (which classify reads only when named) are said. Each with its ``source`` as watch
    would store it: a directory's file by its path under that directory, a file given alone by its
    name (the path as typed did not join with an export's rows, a review)."""
    for path in paths:
        if not Path(path).is_dir():
            yield path, Path(path).name
            continue
        unreadable: dict[str, str] = {}
        others: dict[str, int] = {}
        found = sorted(iter_audio(Path(path), unreadable, others))
        errors.extend(skipped_because(where, why) for where, why in sorted(unreadable.items()))
        # Other audio in the directory (MP3s, Ogg, which BirdNET-Analyzer reads in a folder) was
        # passed over without a word, although classify reads such a file named alone (a trial).
        counts = ", ".join(f"{n} {suffix}" for suffix, n in sorted(others.items()))
        if not found:
            errors.append(f"{path}: a directory without WAV or FLAC recordings"
                          + (f" (it holds {counts}: name such files to classify them)" if others else ""))
        elif others:
            log.warning("%s: %d file(s) in other formats not classified (%s): a directory's WAV and FLAC "
                        "files are; name such files to classify them", shown(str(path)), sum(others.values()), counts)
        yield from ((f, Path(f).relative_to(path).as_posix()) for f in found)


def _check_readable(path: Path) -> None:
    """Say in the file's own words why it cannot be opened (libsndfile says 'System error.'). A
    pipe or device named like a recording is refused before it is opened: opening a pipe waited
    for a writer for ever (a newcomer trial; watch quarantines one)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):
            raise AudioError(f"{path}: not a regular file (a pipe or a device), not a recording")
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AudioError(f"{path}: is a directory, not an audio file") from None
    except PermissionError:
        raise AudioError(f"{path}: permission denied") from None
    except OSError as exc:
        raise AudioError(f"{path}: cannot read: {exc.strerror or exc}") from None


def format_rows(rows: list[dict], fmt: str) -> str:
    """``fmt`` 'csv' (export's columns) or 'table' (a few aligned columns for a person)."""
    out = io.StringIO()
    if fmt == "csv":
        tables.write_csv(out, rows)
        return out.getvalue()
    columns = TABLE_COLUMNS
    if any(r.get("start_local") for r in rows):   # a time zone was given: its times beside UTC's
        at = columns.index("start_utc") + 1
        columns = columns[:at] + ("start_local",) + columns[at:]
    # a person reads the file where it was given (the csv's source is watch's name for it)
    table = [columns] + [tuple("" if v is None else shown(str(v)) for v in
                               (tables.confidence(r) if c == "confidence" else r.get("file_path" if c == "source" else c)
                                for c in columns)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table) + "\n"
