"""The detections database as a sync outbox: changed rows, in order, in batches of bounded size.

Triggers (schema ``m007_sync_outbox``) keep one ``changes`` row per natural key at the sequence
number of its latest write. A batch is the next ``limit`` changes after a cursor, each with its row
as it is now, or as a tombstone (the key alone) when the row is gone: a re-processed file's old
detections travel as deletes, a coverage minute written twice arrives with its final sums. Nothing
else is kept in memory, whatever the backlog.

The cursor of a target moves only after that target committed the batch (``advance``), so a crash
anywhere resends at most one batch, which the server's upsert by natural key makes harmless.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from edgemon.errors import EdgemonError
from edgemon.safetext import shown
from edgemon.storage.disk_budget import full_disk_note
from edgemon.storage.readonly import BUSY_TIMEOUT_MS, connect_read_only
from edgemon.storage.schema import FOLDED_KEYS, SYNC_KEYS, every_row_changed
from edgemon.storage.store import Store
from edgemon.utc import utc_iso

SYNCED_TABLES = tuple(SYNC_KEYS)
# Acknowledged sequence numbers whose tokens are kept per target, at least, and for how many days
# at least: a server restored from a backup that old is recognised, and resent what it lacks
# (``Outbox.offer``). A sync every 15 minutes acknowledges about 100 a day.
KEPT_TOKENS = 1000
KEPT_TOKEN_DAYS = 90


class OutboxError(EdgemonError):
    """The detections database cannot be read or written as a sync outbox."""


class IdentityMoved(OutboxError):
    """Another sync session gave the database a new ``db_uuid`` since this one read it."""


@dataclasses.dataclass(frozen=True)
class Batch:
    """Changes ``(first_seq, last_seq]`` of the outbox.

    ``upserts[table]``: the rows as stored now (dicts of column -> value, without local ids);
    ``deletes[table]``: natural keys (tuples in ``natural_columns(table)`` order) of rows that
    no longer exist.
    """

    first_seq: int
    last_seq: int
    upserts: dict[str, list[dict]]
    deletes: dict[str, list[tuple]]

    @property
    def size(self) -> int:
        return sum(map(len, self.upserts.values())) + sum(map(len, self.deletes.values()))


def key_columns(table: str) -> list[str]:
    """The local columns in ``table``'s change-log slots: 'source', 'start_s', ... (constants
    dropped; a folded slot such as reviews' 'sync_key4' is one column here)."""
    return [c for c in SYNC_KEYS[table] if c[0].isalpha()]


def natural_columns(table: str) -> list[str]:
    """``table``'s natural key as the fleet database keys it: folded slots unfolded, e.g.
    reviews' (source, start_s, label, bundle_id, reviewer)."""
    folded = FOLDED_KEYS.get(table, {})
    return [part for c in key_columns(table) for part in folded.get(c, (c,))]


def key_parts(table: str, k: tuple) -> tuple:
    """The slots of a ``changes`` row's (k1, k2, k3, k4) that ``table`` really uses."""
    return tuple(part for part, c in zip(k, SYNC_KEYS[table]) if c[0].isalpha())


def natural_key(table: str, parts: tuple) -> tuple:
    """``key_parts`` as a natural key (``natural_columns`` order): folded slots decoded."""
    folded = FOLDED_KEYS.get(table, {})
    return tuple(v for part, c in zip(parts, key_columns(table))
                 for v in (json.loads(part) if c in folded else (part,)))


def _check_edgemon_database(path: Path) -> None:
    """Refuse, before anything is written, a file that is not a recorder's database: opening it as
    an outbox would add edgemon's tables to someone else's SQLite file and register a recorder
    that never existed."""
    try:
        with closing(connect_read_only(path)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        full = full_disk_note(path)
        raise OutboxError(f"{path}: {'cannot read it' if full else 'not a readable SQLite database'} ({e}){full}") from e
    if not {"detections", "files"} <= tables:
        raise OutboxError(f"{path}: not an edgemon database (no detections table); nothing was sent or changed")


def _unsent_note(table: str, column: str | None) -> str:
    """The ``sync_meta`` key that says a server lacked ``table``; for a ``column``, the key that says
    its rows went with it (``Outbox.send_again``)."""
    return f"sent:{table}.{column}" if column else f"unsent:{table}"


def _what(table: str, column: str | None) -> str:
    return f"{table}.{column}" if column else table


def _row_of_change(table: str) -> str:
    """SQL: ``table``'s row ``t`` is the one the change log's ``changes`` row names (its key's
    columns; the literal slots of ``SYNC_KEYS`` hold nothing to match)."""
    return " AND ".join(f"t.{c} = changes.k{i + 1}" for i, c in enumerate(SYNC_KEYS[table]) if c[0].isalpha())


class Outbox:
    """The sync side of the detections database at ``path`` (which must exist): its own connection,
    so it can run beside the daemon's writer (WAL). One thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise OutboxError(f"no detections database at {self.path}")
        _check_edgemon_database(self.path)
        Store(self.path).close()  # applies pending migrations (the outbox triggers) before reading
        conn = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT value FROM sync_meta WHERE key = 'db_uuid'").fetchone()
        except sqlite3.Error as e:
            if conn is not None:
                conn.close()
            raise OutboxError(f"cannot read detections database {self.path}: {e}") from e
        if row is None:
            conn.close()
            raise OutboxError(f"{shown(self.path)}: no sync identity (no db_uuid in sync_meta); nothing was sent")
        self.conn, self.db_uuid = conn, row[0]
        self._lookup = {t: f"SELECT * FROM {t} WHERE " + " AND ".join(f"{c} = ?" for c in key_columns(t))
                        for t in SYNCED_TABLES}

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @contextmanager
    def _writing(self, failure: str) -> Iterator[None]:
        """A ``BEGIN IMMEDIATE`` transaction around the block: committed when it ends, rolled back
        when it raises; a SQLite error is ``OutboxError('{failure}: why')``. IMMEDIATE: it waits
        for the daemon's write lock rather than failing when a read would upgrade to a write."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            yield
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise OutboxError(f"{failure}: {e}") from e
            raise

    def last_seq(self) -> int:
        """The newest change's sequence number (0: none yet)."""
        return self.conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]

    def waiting(self, after_seq: int) -> int:
        """How many changes come after ``after_seq`` (sequence numbers have gaps: a row written
        six times leaves one change at its last number)."""
        try:
            return self.conn.execute("SELECT count(*) FROM changes WHERE seq > ?", [after_seq]).fetchone()[0]
        except sqlite3.Error as e:
            raise OutboxError(f"cannot read changes from {self.path}: {e}") from e

    def batch(self, after_seq: int, limit: int) -> Batch | None:
        """The next at most ``limit`` changes after ``after_seq``, or None when there are none.

        Read in one transaction, so the rows are one consistent snapshot of the database.
        """
        try:
            return self._batch(after_seq, limit)
        except sqlite3.Error as e:
            raise OutboxError(f"cannot read changes from {self.path}: {e}") from e

    def _batch(self, after_seq: int, limit: int) -> Batch | None:
        self.conn.execute("BEGIN")
        try:
            changes = self.conn.execute(
                "SELECT seq, tbl, k1, k2, k3, k4 FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                [after_seq, limit]).fetchall()
            if not changes:
                return None
            upserts: dict[str, list[dict]] = {t: [] for t in SYNCED_TABLES}
            deletes: dict[str, list[tuple]] = {t: [] for t in SYNCED_TABLES}
            for c in changes:
                table = c["tbl"]
                key = key_parts(table, (c["k1"], c["k2"], c["k3"], c["k4"]))
                row = self.conn.execute(self._lookup[table], key).fetchone()
                if row is None:
                    deletes[table].append(natural_key(table, key))
                else:
                    found = dict(row)
                    for local in ("id", "detection_id", *FOLDED_KEYS.get(table, ())):
                        found.pop(local, None)  # local ids never leave the recorder
                    upserts[table].append(found)
            return Batch(after_seq, changes[-1]["seq"], upserts, deletes)
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

    def prune(self) -> int:
        """Forget tombstones that every target recorded here has acknowledged, and that no target
        could ask for again; returns how many.

        A target that later starts from nothing never held those rows, so it needs no tombstone
        for them; the log then stays one row per live key plus the deletes still in flight. A
        server restored from its own backup resends from the acknowledgement it holds, as long as
        its token is still kept here (``offer``): the tombstones after the oldest token kept stay,
        or the rows deleted since that backup would stay on the server for good. Scans only the
        changes acknowledged since the last prune.
        """
        pruned = 0
        with self._writing(f"cannot prune the change log of {self.path}"):
            upto = self._acknowledged_by_every_target()
            since = int(self.conn.execute("SELECT coalesce((SELECT value FROM sync_meta WHERE key = 'pruned_seq'), 0)")
                        .fetchone()[0])
            if upto is not None and upto > since:
                for table in SYNC_KEYS:
                    pruned += self.conn.execute(
                        f"DELETE FROM changes WHERE tbl = ? AND seq > ? AND seq <= ? "
                        f"AND NOT EXISTS (SELECT 1 FROM {table} t WHERE {_row_of_change(table)})",
                        [table, since, upto]).rowcount
                self.conn.execute("INSERT INTO sync_meta (key, value) VALUES ('pruned_seq', ?) "
                                  "ON CONFLICT (key) DO UPDATE SET value = excluded.value", [str(upto)])
        return pruned

    def _acknowledged_by_every_target(self) -> int | None:
        """The sequence number up to which tombstones may go: the lowest cursor and token of every
        target recorded here (tokens of a target with no cursor count too: its first
        acknowledgement lost). A target given up holds them back until it is forgotten
        (``forget_target``): deciding by its age would trust the recorder's clock, and one sync
        under a clock set years ahead made every other target look retired (a review)."""
        cursors, tokens = self.conn.execute(
            "SELECT (SELECT min(seq) FROM sync_cursors), (SELECT min(seq) FROM sync_tokens)").fetchone()
        return None if cursors is None else min(cursors, cursors if tokens is None else tokens)

    def lagging_targets(self, target: str) -> list[tuple[str, int, str]]:
        """(target, acknowledged seq, last heard from) of the other targets behind ``target``: the
        ones holding tombstones back while ``target`` syncs on, oldest first. A target whose first
        acknowledgement was lost has tokens only (its lowest seq, its newest offer): it holds them
        back too (a review found it never named)."""
        return [tuple(r) for r in self.conn.execute(
            "SELECT target, seq, at FROM ("
            " SELECT target, seq, updated_at AS at FROM sync_cursors"
            " UNION ALL SELECT target, min(seq), max(offered_utc) FROM sync_tokens"
            "  WHERE target NOT IN (SELECT target FROM sync_cursors) GROUP BY target)"
            " WHERE target != ? AND seq < coalesce((SELECT seq FROM sync_cursors WHERE target = ?), 0) "
            "ORDER BY at", [target, target])]

    def forget_target(self, target: str) -> tuple[int, int]:
        """Forget a sync target (a server retired, or one now reached under another spelling of its
        URL: cursors are kept by spelling): its cursor and tokens go, so it no longer holds the
        change log's tombstones. Returns (its acknowledged seq, tokens removed); OutboxError when
        no such target is recorded here."""
        with self._writing(f"cannot forget sync target {shown(target)!r} in {self.path}"):
            row = self.conn.execute("SELECT seq FROM sync_cursors WHERE target = ?", [target]).fetchone()
            tokens = self.conn.execute("DELETE FROM sync_tokens WHERE target = ?", [target]).rowcount
            if row is None and not tokens:
                known = [t for (t,) in self.conn.execute(
                    "SELECT target FROM sync_cursors UNION SELECT target FROM sync_tokens ORDER BY 1")]
                raise OutboxError(f"{shown(self.path)}: no sync target {shown(target)!r} recorded here; known: "
                                  f"{', '.join(shown(t) for t in known) or 'none'}")
            self.conn.execute("DELETE FROM sync_cursors WHERE target = ?", [target])
        return (0 if row is None else row[0]), tokens

    def hold_for_later(self, table: str, column: str | None = None) -> None:
        """Remember that a server lacked ``table`` (``fleetdb.ADDED_BY_REVISION``), or its ``column``
        (``fleetdb.ADDED_COLUMNS``), while its changes went by: ``send_again`` puts its rows back in
        the log once a server holds it."""
        if not self._unsent(table, column):   # written once, not at each sync
            with self._writing(f"cannot remember the unsent {_what(table, column)} in {self.path}"):
                self._mark_unsent(table, column, True)

    def send_again(self, table: str, column: str | None = None) -> int:
        """If a server lacked ``table`` or its ``column`` before (``hold_for_later``), move every row
        of it (with a value in ``column``) to the end of the change log (new sequence numbers, after
        every cursor: sent again to every target, which upserts them harmlessly) and forget the note;
        returns how many rows were moved. Tombstones stay where they are."""
        if not self._unsent(table, column):
            return 0
        valued = f" AND t.{column} IS NOT NULL" if column else ""
        with self._writing(f"cannot queue the {_what(table, column)} again in {self.path}"):
            self.conn.execute(f"DELETE FROM changes WHERE tbl = ? AND EXISTS (SELECT 1 FROM {table} t "
                              f"WHERE {_row_of_change(table)}{valued})", [table])
            moved = self.conn.execute(every_row_changed(table, f"{column} IS NOT NULL" if column else "")).rowcount
            self._mark_unsent(table, column, False)
        return moved

    def _unsent(self, table: str, column: str | None) -> bool:
        """Whether ``table``'s rows (or their ``column``) wait to be sent again. A table counts as
        sent unless noted; a column as unsent until ``send_again`` has run once: an edgemon before
        the column knew none to send and left no note, and the rows it sent would never carry it
        (a review of view revision 10: spans of a season synced before the upgrade stayed NULL on
        the server)."""
        noted = self.conn.execute("SELECT 1 FROM sync_meta WHERE key = ?",
                                  [_unsent_note(table, column)]).fetchone() is not None
        return noted if column is None else not noted

    def _mark_unsent(self, table: str, column: str | None, unsent: bool) -> None:
        """Record ``_unsent``'s answer (inside ``_writing``): a table's note says unsent, a column's sent."""
        note = _unsent_note(table, column)
        if unsent == (column is None):
            self.conn.execute("INSERT INTO sync_meta (key, value) VALUES (?, '1') ON CONFLICT (key) DO NOTHING", [note])
        else:
            self.conn.execute("DELETE FROM sync_meta WHERE key = ?", [note])

    def pruned_behind(self, acked: int) -> bool:
        """Whether a target that acknowledged up to ``acked`` (not 0: it holds rows) missed
        tombstones pruned while it was forgotten: rows deleted here since may stay on it."""
        row = self.conn.execute("SELECT value FROM sync_meta WHERE key = 'pruned_seq'").fetchone()
        return 0 < acked < (0 if row is None else int(row[0]))

    def cursor(self, target: str) -> int:
        """The last sequence number ``target`` acknowledged, as recorded here (0: never)."""
        row = self.conn.execute("SELECT seq FROM sync_cursors WHERE target = ?", [target]).fetchone()
        return 0 if row is None else row[0]

    def advance(self, target: str, seq: int) -> None:
        """Record that ``target`` committed every change up to ``seq``; call only after it did."""
        with self._writing(f"cannot record the sync cursor in {self.path}"):
            self.conn.execute("""
                INSERT INTO sync_cursors (target, seq, updated_at) VALUES (?, ?, ?)
                ON CONFLICT (target) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at""",
                [target, seq, utc_iso(dt.datetime.now(dt.timezone.utc))])

    def high_seq(self) -> int:
        """The highest sequence number this database ever gave a change (0: none). Unlike
        ``last_seq`` it never goes down when pruned tombstones leave the log."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        return 0 if row is None else row[0]

    def running_bundle(self) -> dict:
        """The bundle this database's daemon ran last (its newest heartbeat's) and its manifest as
        the daemon recorded it, as ``DeviceInfo`` fields; {} when no heartbeat names one. The
        recorder's bundle is what its database says, not the settings of whoever syncs it: a card
        synced from a laptop registered the laptop's embedded bundle (a review)."""
        try:
            row = self.conn.execute(
                "SELECT h.bundle_id, b.manifest FROM heartbeats h LEFT JOIN bundles b USING (bundle_id) "
                "WHERE h.bundle_id IS NOT NULL ORDER BY h.id DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:   # a database from before heartbeats named their bundle
            return {}
        return {} if row is None else {"bundle_id": row["bundle_id"], "bundle_manifest": row["manifest"]}

    def forked_from(self) -> str | None:
        """The ``db_uuid`` this database synced as before its last ``fork`` (None: never forked)."""
        row = self.conn.execute("SELECT value FROM sync_meta WHERE key = 'forked_from'").fetchone()
        return None if row is None else row[0]

    def offer(self, target: str, seq: int) -> str:
        """A new token for the batch ending at ``seq`` to ``target``, committed here *before* the
        batch is sent, so that a server which committed it is recognised even if its
        acknowledgement never arrived. Keeps every token since the last acknowledgement recorded
        here (``advance``): on a link that fails mid-batch for weeks each attempt offers one, and
        the one the server holds must stay (dropped, the database took itself for a restored
        backup and sent everything again). Before it, the newest token of each sequence number
        offered in the last ``KEPT_TOKEN_DAYS`` days, or among the newest ``KEPT_TOKENS``: a
        batch's later attempts are only made while no earlier one is known to be committed, so
        the newest is the one a server can hold."""
        token = uuid.uuid4().hex
        with self._writing(f"cannot record a sync token in {self.path}"):
            self.conn.execute("INSERT INTO sync_tokens (token, target, seq, offered_utc) VALUES (?, ?, ?, ?)",
                              [token, target, seq, utc_iso(dt.datetime.now(dt.timezone.utc))])
            acknowledged = "coalesce((SELECT seq FROM sync_cursors WHERE target = :target), 0)"
            newest = "SELECT max(rowid) FROM sync_tokens WHERE target = :target"
            self.conn.execute(
                f"DELETE FROM sync_tokens WHERE target = :target AND seq < {acknowledged} AND ("
                f"rowid NOT IN ({newest} GROUP BY seq) OR (offered_utc < :cutoff AND "
                f"rowid NOT IN ({newest} AND seq < {acknowledged} GROUP BY seq ORDER BY seq DESC LIMIT :kept)))",
                {"target": target, "kept": KEPT_TOKENS,
                 "cutoff": utc_iso(dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=KEPT_TOKEN_DAYS))})
        return token

    def offered(self, token: str) -> bool:
        """Whether this database offered ``token`` (to any target: one server may be reached
        under two names)."""
        return self.conn.execute("SELECT 1 FROM sync_tokens WHERE token = ?", [token]).fetchone() is not None

    def identity_moved(self) -> bool:
        """Whether another session gave this database a new ``db_uuid`` (``fork``) since this one read it."""
        row = self.conn.execute("SELECT value FROM sync_meta WHERE key = 'db_uuid'").fetchone()
        return row[0] != self.db_uuid

    def fork(self) -> str:
        """Start a new lineage: a new ``db_uuid``, no cursors, no tokens, so every target receives
        every row again under the new UUID. Returns the new UUID; the old one is kept as
        ``forked_from``. For a database whose history diverged from what a server acknowledged."""
        new = str(uuid.uuid4())
        with self._writing(f"cannot give {self.path} a new sync identity"):
            # Compare-and-set: a second session that read the old UUID must not fork it again.
            if self.conn.execute("UPDATE sync_meta SET value = ? WHERE key = 'db_uuid' AND value = ?",
                                 [new, self.db_uuid]).rowcount != 1:
                raise IdentityMoved(f"{shown(self.path)}: another sync gave it a new sync identity meanwhile")
            self.conn.execute("INSERT INTO sync_meta (key, value) VALUES ('forked_from', ?) "
                              "ON CONFLICT (key) DO UPDATE SET value = excluded.value", [self.db_uuid])
            self.conn.execute("DELETE FROM sync_meta WHERE key = 'pruned_seq'")
            self.conn.execute("DELETE FROM sync_cursors")
            self.conn.execute("DELETE FROM sync_tokens")
        self.db_uuid = new
        return new
