"""Whose Raven tables a directory holds, noted in its hidden file ``.edgemon-raven-owner``, so that
no export writes into tables that are not its own.

- **One recorder.** Recorders on one schedule name their recordings alike (an AudioMoth by its
  start time; two Pis both have ``/recordings/20240501_060000.WAV``), and a table's ``Begin Path``
  cannot tell them apart: a second recorder's export would append to (or replace) the first
  one's tables. One recorder is a shared device id other than the settings' default, or, failing
  that, the same database (``sync_meta.db_uuid``, or the id it had before sync gave it a new one).
- **Cursors, or plain exports.** A plain export rewrites each table whole, so into a directory
  where a cursor appends it would replace what the cursor delivered (filtered, lose those rows
  for good); a cursor appending to a plain export's tables, or a second cursor whose filter may
  take the same rows, would deliver them twice. Cursors whose ``--label`` sets are disjoint share
  a directory.

A directory is claimed once an export has written tables into it (an export that wrote nothing,
or was stopped, leaves no claim). One written before this note existed is claimed by the first
export after it: what went on there before is not known.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.storage.readonly import has_table

OWNER_FILE = ".edgemon-raven-owner"
DEFAULT_DEVICE_ID = "edgemon"   # the settings' default: shared by every recorder left unconfigured


@dataclasses.dataclass(frozen=True)
class Claim:
    """What an export into ``directory`` notes there once it has written tables."""

    directory: Path
    note: dict


def check_directory(conn: sqlite3.Connection, db_path: Path, out_dir: Path, error: type[EdgemonError],
                    cursor: str | None, labels: tuple[str, ...]) -> Claim | None:
    """Refuse (``error``, one line) an export into ``out_dir`` of tables that are not this
    database's recorder's, or not this ``cursor``'s (None: a plain export; ``labels``: its
    filter's, empty for all); otherwise the claim to note once it has written (None: a database
    with no detections)."""
    try:
        mine = {d for (d,) in conn.execute("SELECT DISTINCT device_id FROM detections")}
        my_db = {str(v) for (v,) in conn.execute(
            "SELECT value FROM sync_meta WHERE key IN ('db_uuid', 'forked_from', 'rebuilt_from') "
            "AND value IS NOT NULL")} \
            if has_table(conn, "sync_meta") else set()
    except sqlite3.Error as e:
        raise error(f"cannot read detections: {e}") from e
    if not mine:
        return None
    held = _read(out_dir, error)
    theirs, their_dbs = set(held.get("device_ids", [])), set(held.get("databases", []))
    cursors, plain = dict(held.get("cursors", {})), bool(held.get("plain"))
    if theirs:
        named = (theirs & mine) - {DEFAULT_DEVICE_ID}
        same_db = bool(my_db & their_dbs) or (not my_db or not their_dbs) and bool(theirs & mine)
        if not named and not same_db:
            raise error(f"Raven directory {out_dir} holds the tables of recorder {', '.join(sorted(theirs))} "
                        f"(database {held.get('database')}), and {db_path} is recorder {', '.join(sorted(mine))}'s"
                        f"{' in another database (another id, whatever its path)' if theirs & mine else ''}: two "
                        f"recorders name their recordings alike (an AudioMoth by the start time), so one would write "
                        f"into the other's tables; give each database its own --output directory"
                        f"{_same_recorder_hint(out_dir) if theirs & mine else ''}")
    if cursor is None and cursors:
        raise error(f"Raven directory {out_dir} is export cursor {sorted(cursors)[0]!r}'s: a plain export would "
                    f"replace the tables it delivered (a filtered one would lose their rows); export into "
                    f"another directory")
    if cursor is not None and plain:
        raise error(f"Raven directory {out_dir} holds a plain export's tables: export cursor {cursor!r} would "
                    f"append rows they already hold; give the cursor its own --output directory")
    if cursor is not None and cursor not in cursors:
        for other, theirs_labels in sorted(cursors.items()):
            if not (labels and theirs_labels and not set(labels) & set(theirs_labels)):
                raise error(f"Raven directory {out_dir} is export cursor {other!r}'s, and cursor {cursor!r} may "
                            f"take the same rows (their --label filters are not disjoint): it would append them "
                            f"to the same tables again; give it its own --output directory")
    if cursor is None:
        plain = True
    else:
        cursors[cursor] = list(labels) or None
    note = {"device_ids": sorted(mine | theirs), "databases": sorted(my_db | their_dbs),
            "database": str(Path(db_path).resolve()), "cursors": cursors, "plain": plain}
    return Claim(out_dir, note)


def _same_recorder_hint(out_dir: Path) -> str:
    return (f" (if it is the same recorder's database started afresh, remove {out_dir / OWNER_FILE} to let it "
            f"take the directory over)")


def owner_note(claim: Claim | None) -> tuple[Path, str] | None:
    """The note ``check_directory`` found, as ``write_raven`` writes it with the tables (so it is
    staged, fsynced, journaled and renamed with them); None with nothing to claim."""
    if claim is None:
        return None
    return claim.directory / OWNER_FILE, json.dumps(claim.note)


def _read(out_dir: Path, error: type[EdgemonError]) -> dict:
    marker = out_dir / OWNER_FILE
    try:
        held = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(held, dict) or not isinstance(held.get("cursors", {}), dict):
            raise ValueError("not a note of this export")
        return held
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise error(f"{marker}: unreadable ({getattr(e, 'strerror', None) or e}); it names the recorder and the "
                    f"export cursors whose Raven tables {out_dir} holds: restore it, or export into another "
                    f"directory") from e
