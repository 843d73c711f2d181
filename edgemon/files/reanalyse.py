"""``edgemon reanalyse``: run recordings already analysed, and still on disk, through another bundle
(an adapted or newer one) and store its detections beside the old ones: the bundle id is part of
a detection's key, so both sets stay and exports can pick one with ``--bundle``.

The ledger is read, never changed: ``watch`` keeps treating the files as done with its own bundle.
Run again with the same bundle, a recording's detections found again keep their rows and ids
(``Store.replace_detections``): reviews of them still point at them, and export cursors do not
deliver them twice.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from edgemon.analysis.analyzer import Analyzer
from edgemon.errors import AudioError, EdgemonError
from edgemon.files.analyse_file import detection_rows
from edgemon.files.preroll import Listings, find_preroll, read_lead
from edgemon.files.triggered import silences_of
from edgemon.safetext import shown
from edgemon.storage.readonly import (BUSY_TIMEOUT_MS, connect_read_only, error_code, has_table, newest_device_id,
                                      recording_path)
from edgemon.storage.store import Store
from edgemon.utc import parse_utc

log = logging.getLogger(__name__)

SHORTER_S = 0.5   # less audio read than the ledger's duration by more: not the recording analysed
WAIT_STEP_MS = 500   # one try for the write lock, while another process holds it (Ctrl-C is taken between)


class ReanalyseError(EdgemonError):
    """The database cannot be read for re-analysis."""


@dataclasses.dataclass(frozen=True)
class ReanalyseResult:
    files: int          # recordings analysed again
    detections: int     # detections stored for the new bundle
    missing: list[str]  # sources whose recording is no longer on disk
    failed: list[str]   # "source: error" of recordings that could not be read
    changed: list[str] = dataclasses.field(default_factory=list)   # "source: why": not the file watch analysed
    current: int = 0    # recordings the bundle had analysed since they last changed: passed over


def _ledger(db_path: Path, bundle_id: str) -> tuple[list[dict], list[str]]:
    """The finished recordings of the ledger, each with its device id and the ledger row's
    ``updated_at`` as ``bundle_id`` last saw it (``seen_ledger_at``, None if never); and "source: why" of the recordings with
    detections that watch has quarantined since (cut short after analysis)."""
    if not Path(db_path).is_file():
        raise ReanalyseError(f"detections database not found: {db_path}")
    try:
        with closing(connect_read_only(db_path)) as conn:
            if not has_table(conn, "files") or not has_table(conn, "detections"):   # was "no such table: files"
                raise ReanalyseError(f"{db_path}: not an edgemon detections database (no ledger of recordings); "
                                     f"nothing was changed")
            conn.row_factory = sqlite3.Row
            files = [dict(r) for r in conn.execute("SELECT * FROM files WHERE state = 'done' ORDER BY source")]
            devices = dict(conn.execute("SELECT source, min(device_id) FROM detections GROUP BY source").fetchall())
            analysed = dict(conn.execute("SELECT source, ledger_at FROM analyses WHERE bundle_id = ?", [bundle_id])
                            .fetchall()) if has_table(conn, "analyses") else {}
            held = [f"{r['source']}: quarantined by watch ({r['error']})" for r in conn.execute(
                "SELECT source, error FROM files WHERE state = 'quarantined' AND source IN "
                "(SELECT source FROM detections) ORDER BY source")]
            watching = _device_changes(conn)
    except sqlite3.Error as e:
        raise ReanalyseError(f"cannot read the ledger of {db_path}: {e}") from e
    for row in files:
        row["device_id"] = devices.get(row["source"]) or _device_at(watching, row["updated_at"])
        row["seen_ledger_at"] = analysed.get(row["source"])
    return files, held


def _device_changes(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(time, device id) of each heartbeat whose device differs from the one before, oldest first;
    empty when the database only ever had one (then the newest is every recording's)."""
    if not has_table(conn, "heartbeats") or conn.execute(
            "SELECT count(DISTINCT device_id) FROM heartbeats").fetchone()[0] < 2:
        return []
    changes: list[tuple[str, str]] = []
    for at, device in conn.execute("SELECT at_utc, device_id FROM heartbeats ORDER BY at_utc, id"):
        if not changes or changes[-1][1] != device:
            changes.append((at, device))
    return changes


def _device_at(changes: list[tuple[str, str]], when: str | None) -> str | None:
    """The device that was running when a recording's ledger row was last written (its analysis,
    or a touch noted): a recording with no detection of its own took the database's newest id,
    another recorder's once the id had changed (a review). None: not known here."""
    if not changes or when is None:
        return None
    i = bisect.bisect_right([at for at, _ in changes], when) - 1
    return changes[max(i, 0)][1]


def _analysed_since_changed(row: dict) -> bool:
    """The bundle analysed the recording as the ledger row now stands (not before ``watch``
    analysed it again, grown): its detections of it are current. By value, never by the clock."""
    return row["seen_ledger_at"] is not None and row["seen_ledger_at"] == row["updated_at"]


def reanalyse(db_path: Path, analyzer: Analyzer, recordings: Path | None = None,
              device_id: str = "edgemon", again: bool = False) -> ReanalyseResult:
    """Analyse every finished recording of the ledger again with ``analyzer``'s bundle, but for
    those it analysed since the ledger last changed them (a run stopped half way goes on where it
    stopped; a newcomer trial found each rerun starting again at the first), unless ``again``.

    A recording is looked for under ``recordings`` by its source name, else at the ledger's path.
    One whose size or first audio bytes (``storage.fingerprint``) differ from the ledger's is not
    the file ``watch`` analysed (truncated, cut short by a full card, another recorder's file of
    the same name, often of the same size), as is one of the same size whose last bytes differ
    (``tail_digest``: written again in place) or that decodes to less audio than the ledger's
    duration (damaged since); it is left alone, listed as changed: analysing it
    would replace detections of audio that is gone. Times come from the ledger's start time, as
    ``watch`` stored them; the device id from the file's earlier detections, else the database's
    newest (``storage.readonly.newest_device_id``: its heartbeats first), else ``device_id``.
    Per-file failures are counted, not fatal.
    """
    if recordings is not None and not Path(recordings).is_dir():
        raise ReanalyseError(f"--recordings {recordings}: "
                             f"{'not a directory' if Path(recordings).exists() else 'no such directory'}")
    files, changed = _ledger(db_path, analyzer.bundle.bundle_id)
    current = [] if again else [row for row in files if _analysed_since_changed(row)]
    if current:
        log.info("%d of %d recording(s) already analysed by %s since they last changed: passed over (--again "
                 "analyses them again)", len(current), len(files), analyzer.bundle.bundle_id)
        files = [row for row in files if not _analysed_since_changed(row)]
    # A recording with no detection yet takes the recorder's own id, not this machine's settings
    # (a review: `watch --device-id site-07` then `reanalyse` on a workstation stored 'edgemon').
    device_id = newest_device_id(db_path) or device_id
    bundle_id = analyzer.bundle.bundle_id
    missing, failed, done = [], [], []
    with Store(db_path) as store:
        # The bundle's names and confidence ceiling, as watch records its own: exports name its
        # species and check a --min-confidence against what it can store.
        recorded = store.record_bundle(bundle_id, analyzer.bundle.manifest)
        try:
            stored = _each(store, files, analyzer, recordings, device_id, done, missing, failed, changed)
            if not recorded:   # refused at the start (another process's long write): no later start records it
                store.record_bundle(bundle_id, analyzer.bundle.manifest)
        except KeyboardInterrupt:   # Ctrl-C, or SIGTERM through terminate_as_interrupt
            # A recording's detections are stored in one transaction: those done are whole, the
            # rest hold only other bundles'. An export by --bundle said nothing of it (a newcomer trial).
            log.warning("reanalyse interrupted after %d of %d recording(s): %s's detections are stored for those "
                        "only; run the same command again to finish (it goes on from there)", len(done),
                        len(files), bundle_id)
            raise
    return ReanalyseResult(len(done), stored, missing, failed, changed, len(current))


def _each(store: Store, files: list[dict], analyzer: Analyzer, recordings: Path | None, device_id: str,
          done: list, missing: list, failed: list, changed: list) -> int:
    """Analyse ``files`` again into ``store``, each after its predecessor's pre-roll as watch
    analyses it (``files.preroll``); returns the detections stored, and appends each
    recording's source to the list of what became of it."""
    bundle_id = analyzer.bundle.bundle_id
    stored = 0
    listings = Listings()
    for i, row in enumerate(files, 1):
        try:   # the same search as the review page's and adapt's, but a grown file is changed too
            path = recording_path({"source": row["source"], "file_path": row["path"], "file_size": row["size"],
                                   "file_fingerprint": row.get("fingerprint"),
                                   "file_tail_digest": row.get("tail_digest")}, recordings, grown_ok=False)
        except AudioError as exc:
            changed.append(str(exc))
            continue
        if path is None:
            missing.append(row["source"])
            continue
        if recordings is not None and not Path(path).resolve().is_relative_to(Path(recordings).resolve()):
            # --recordings reads as where the audio is: a fallback to the card said nothing (a newcomer trial)
            log.warning("%s: not under --recordings as it was analysed; read from the ledger's path %s",
                        shown(row["source"]), shown(str(path)))
        start = None if row["start_utc"] is None else parse_utc(row["start_utc"])
        try:
            before = find_preroll(Path(path), row["source"], analyzer, store,
                                  started=(start, row["time_source"] or "mtime"), listings=listings)
            analysis = analyzer.analyse_file(path, lead=before and read_lead(before, analyzer))
            left_out = silences_of(path)
        except Exception as exc:  # a per-file boundary: note it against the file, go on
            failed.append(f"{row['source']}: {exc}")
            continue
        if not analysis.duration_s:
            if row.get("duration_s") == 0:   # as watch found it (a header and no audio): nothing to do again
                log.info("[%d/%d] %s: no audio, as when it was analysed", i, len(files), row["source"])
                continue
            failed.append(f"{row['source']}: no audio in {path}")
            continue
        if row.get("duration_s") and analysis.duration_s < row["duration_s"] - SHORTER_S:
            # Decoding stopped early where it had not (a FLAC damaged since): the detections
            # after that point would be dropped for audio that cannot be read, not for silence.
            changed.append(f"{row['source']}: {analysis.duration_s:.1f} s of audio read from {path}, "
                           f"{row['duration_s']:.1f} s when analysed")
            continue
        if analysis.note:   # read, but not as usual (a header never finalised, a cut FLAC)
            log.warning("%s: %s", shown(row["source"]), shown(analysis.note))
        detections = detection_rows(analysis.events, device_id=row["device_id"] or device_id, source=row["source"],
                                    start_utc=start, time_source=row["time_source"] or "mtime",
                                    clock_suspect=bool(row["clock_suspect"]), bundle_id=bundle_id, left_out=left_out)
        # Watch may have analysed the recording again while it was read here (grown, or written
        # again): its newer detections are kept (a review).
        count = _store(store, row, bundle_id, detections, analysis.duration_s, len(done), len(files))
        if count is None:
            changed.append(f"{row['source']}: its ledger row changed while reanalyse read it (watch analysed it "
                           f"again, or noted it touched); run reanalyse again")
            continue
        stored += count
        done.append(row["source"])
        log.info("[%d/%d] %s: %d detection(s) with %s", i, len(files), row["source"], len(detections), bundle_id)
    return stored


def _store(store: Store, row: dict, bundle_id: str, detections: list, duration_s: float, done: int,
           total: int) -> int | None:
    """``Store.replace_detections`` of one recording, waiting for as long as another process holds
    the database's write lock (a long write, a sqlite3 shell left in a transaction): the store's
    busy timeout ran out after 30 s and reanalyse ended in a traceback, "database is locked" (a
    field-station trial), where watch holds its work and goes on. Said once it has waited the busy
    timeout. Any other refusal (a full disk) is one line saying what is stored."""
    started, said = time.monotonic(), False
    # Tried in short waits: SQLite's own wait for a lock takes no signal, so a Ctrl-C while it
    # waited out the busy timeout stopped reanalyse only when it ended (28 s later, a review).
    busy_timeout = store.db.execute("PRAGMA busy_timeout").fetchone()[0]
    store.db.execute(f"PRAGMA busy_timeout = {min(WAIT_STEP_MS, busy_timeout)}")
    try:
        while True:
            try:
                return store.replace_detections(row["source"], bundle_id, detections, duration_s,
                                                ledger_at=row["updated_at"])
            except sqlite3.OperationalError as e:
                if error_code(e) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise ReanalyseError(f"{shown(str(store.path))} refused {bundle_id}'s detections of "
                                         f"{shown(row['source'])} ({e}) after {done} of {total} recording(s): those "
                                         f"are stored; run the same command again to go on from there") from None
                if not said and time.monotonic() - started >= BUSY_TIMEOUT_MS / 1000:
                    log.warning("another process has held the write lock of %s for over %g s: waiting for it to "
                                "store %s (Ctrl-C stops; the same command goes on from there)",
                                shown(str(store.path)), BUSY_TIMEOUT_MS / 1000, shown(row["source"]))
                    said = True
    finally:
        store.db.execute(f"PRAGMA busy_timeout = {busy_timeout}")
