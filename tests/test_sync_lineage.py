"""Fleet sync when the recorder's history is not the one the server acknowledged: a database
restored from an older backup, a cloned SD card (same or new device id), a lost acknowledgement,
a server restored from its own backup, and an old server schema upgraded in place.

Real SQLite files written through ``Store``, a real PostgreSQL server; sessions run in-process
(``sync_once``), which is what ``edgemon sync`` and the service call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from devtools.recorder_db import add_file, make_recorder
import edgemon.storage.store
from edgemon.review import reviews
from edgemon.storage.rows import CoverageMinute, Detection, Heartbeat
from edgemon.storage.store import Store
from edgemon.sync.fleet_status import collect_fleet
from edgemon.sync.fleetdb import BusyError, DeviceInfo
from edgemon.sync.outbox import IdentityMoved, Outbox
from edgemon.sync.sender import SyncConfig, SyncResult, _own_lineage, sync_once
from tests.sync_helpers import count_server_detections, local_state, server_state
from tests.test_sync import fleet, server  # noqa: F401  (fixtures: one server per module)

psycopg = pytest.importorskip("psycopg")


def sync(db: Path, url: str, device_id: str = "rec-a", batch_rows: int = 500, bundle_id: str | None = None) -> SyncResult:
    return sync_once(db, DeviceInfo(device_id, "", bundle_id=bundle_id),
                     SyncConfig(url=url, batch_rows=batch_rows, snapshot=None))


def uuid_of(db: Path) -> str:
    with Outbox(db) as outbox:
        return outbox.db_uuid


def copy_database(src: Path, dst: Path) -> Path:
    """A consistent copy of a live database (SQLite's online backup), as a backup or an SD card image."""
    with contextlib.closing(sqlite3.connect(src)) as s, contextlib.closing(sqlite3.connect(dst)) as d:
        s.backup(d)
    return dst


def restore(backup: Path, db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, db)


def work(db: Path, device_id: str, files: range, seed: int) -> None:
    rng = random.Random(seed)
    with Store(db) as store:
        for i in files:
            add_file(store, device_id, i, 5, rng)


def listen(db: Path, minutes: range, **seconds: float) -> None:
    """Live coverage minutes of 2024-05-01 05:MM (``make_recorder`` writes 05:00-05:09)."""
    with Store(db) as store:
        store.add_coverage([CoverageMinute(source="mic", device_id="rec-a", minute_utc=f"2024-05-01T05:{m:02d}:00Z",
                                           end_utc=f"2024-05-01T05:{m:02d}:59Z", **seconds) for m in minutes])


def assert_server_holds(conn, db: Path) -> None:
    """The server's rows under ``db``'s UUID are exactly the recorder's."""
    assert server_state(conn, [uuid_of(db)]) == local_state(db)


def test_database_restored_from_an_older_backup_loses_nothing(fleet, tmp_path, caplog):
    db = make_recorder(tmp_path / "a.db", "rec-a", files=10, per_file=5, seed=1)
    sync(db, fleet.url)
    backup = copy_database(db, tmp_path / "backup.db")
    work(db, "rec-a", range(10, 20), seed=2)           # changes the backup does not have ...
    listen(db, range(10, 15), analysed_s=60.0)         # ... live minutes heard after the backup too
    sync(db, fleet.url)                                # ... acknowledged by the server
    old_uuid = uuid_of(db)
    with fleet.connect() as conn:
        held_before = server_state(conn, [old_uuid])
    restore(backup, db)
    work(db, "rec-a", range(30, 45), seed=3)           # new work, numbered again from the backup's end
    listen(db, range(10, 15), lost_daemon_s=60.0)      # the restored listener books the gap as lost ...
    listen(db, range(15, 17), analysed_s=60.0)         # ... and hears on
    with caplog.at_level(logging.WARNING, logger="edgemon.sync"):
        result = sync(db, fleet.url)
    assert result.clashes == ()      # its ancestor's heartbeats are shared history, not a second recorder
    with fleet.connect() as conn:
        # Every row of the restored database reached the server: none was taken for one it had.
        assert local_state(db)["detections"] <= server_state(conn, [uuid_of(db)])["detections"]
        assert_server_holds(conn, db)
        assert server_state(conn, [old_uuid]) == held_before          # nothing the server held is lost
        rows, keys = count_server_detections(conn)
        assert rows == keys
        assert conn.execute("SELECT forked_from::text FROM edgemon.databases WHERE db_uuid = %s",
                            [uuid_of(db)]).fetchone()[0] == old_uuid
    assert uuid_of(db) != old_uuid
    assert "restored from an older backup" in caplog.text and "sends all its rows again" in caplog.text
    work(db, "rec-a", range(50, 52), seed=4)           # the new lineage syncs on as usual
    assert sync(db, fleet.url).changes > 0
    with fleet.connect() as conn:
        assert_server_holds(conn, db)
    report = collect_fleet(fleet.url)
    assert [str(h["db_uuid"]) for h in report["health"]] == [uuid_of(db)]   # the superseded UUID: no visit
    # The backup's live minutes reached the server under both UUIDs: each counts once in effort,
    # and the minutes the first card heard stay heard, whatever the restored one booked for them.
    effort = [e for e in report["effort"] if e["site"] == "rec-a"]
    assert sum(e["listen_h"] for e in effort) * 3600 == pytest.approx(10 * 55.0 + 5 * 60.0 + 2 * 60.0)
    assert sum(e["lost_h"] for e in effort) * 3600 == pytest.approx(10 * 5.0)


def test_cloned_card_keeps_its_rows_apart_and_is_reported(fleet, tmp_path):
    first = make_recorder(tmp_path / "first.db", "rec-a", files=8, per_file=5, seed=5)
    sync(first, fleet.url)
    clone = copy_database(first, tmp_path / "clone.db")      # the card, imaged into a second recorder
    work(first, "rec-a", range(10, 20), seed=6)
    work(clone, "rec-a", range(20, 30), seed=7)
    for db, run in ((first, "after-1"), (clone, "after-2")):   # both run at the same time from now on
        with Store(db) as store:
            store.add_heartbeat(Heartbeat(run_id=run, mode="watch", device_id="rec-a", at_utc="2024-05-02T06:00:00Z",
                                          started_utc="2024-05-02T06:00:00Z", uptime_s=0.0))
    sync(first, fleet.url)
    second = sync(clone, fleet.url)
    assert uuid_of(clone) != uuid_of(first)
    with fleet.connect() as conn:
        assert_server_holds(conn, first)                      # the first recorder's rows untouched
        assert_server_holds(conn, clone)                      # the clone's rows all there, apart
    assert uuid_of(first) in second.clashes                   # and the shared device id is reported
    work(first, "rec-a", range(40, 42), seed=8)               # the first recorder syncs on, unforked
    before = uuid_of(first)
    sync(first, fleet.url)
    assert uuid_of(first) == before


def test_cloned_card_under_a_new_device_id_never_merges_into_the_old_one(fleet, tmp_path):
    first = make_recorder(tmp_path / "first.db", "site-01", files=8, per_file=5, seed=9)
    sync(first, fleet.url, device_id="site-01")
    clone = copy_database(first, tmp_path / "clone.db")
    work(clone, "site-02", range(20, 30), seed=10)
    sync(clone, fleet.url, device_id="site-02")               # the clone syncs first, its ack token matches
    assert uuid_of(clone) != uuid_of(first)
    with fleet.connect() as conn:
        devices = dict(conn.execute("SELECT db_uuid::text, device_id FROM edgemon.databases").fetchall())
        assert devices == {uuid_of(first): "site-01", uuid_of(clone): "site-02"}
        assert_server_holds(conn, first)
        assert_server_holds(conn, clone)
    work(first, "site-01", range(40, 45), seed=11)
    before = uuid_of(first)
    sync(first, fleet.url, device_id="site-01")
    assert uuid_of(first) == before
    with fleet.connect() as conn:
        assert_server_holds(conn, first)


def test_lost_acknowledgement_and_restored_server_resend_without_a_new_lineage(fleet, tmp_path):
    db = make_recorder(tmp_path / "a.db", "rec-a", files=20, per_file=5, seed=12)
    sync(db, fleet.url, batch_rows=40)
    first_uuid = uuid_of(db)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:   # the last ack never got recorded
        conn.execute("UPDATE sync_cursors SET seq = 0")
        early_seq, early_token = conn.execute("SELECT seq, token FROM sync_tokens ORDER BY seq LIMIT 1 OFFSET 1").fetchone()
    work(db, "rec-a", range(30, 33), seed=13)
    sync(db, fleet.url, batch_rows=40)
    assert uuid_of(db) == first_uuid
    with fleet.connect() as conn:
        assert_server_holds(conn, db)
        # The server restored from its own older backup: it holds an earlier acknowledgement.
        conn.execute("UPDATE edgemon.databases SET acked_seq = %s, acked_token = %s", [early_seq, early_token])
        for table in ("files", "detections"):    # it lacks what came after, such as the last files
            conn.execute(f"DELETE FROM edgemon.{table} WHERE source >= 'rec-a/20240501_003000.wav'")
    result = sync(db, fleet.url, batch_rows=40)
    assert uuid_of(db) == first_uuid and result.changes > 0
    with fleet.connect() as conn:
        assert_server_holds(conn, db)


def add_scored_file(db: Path, source: str, scores: list[float]) -> None:
    detections = [Detection(device_id="rec-a", source=source, start_s=3.0 * i, end_s=3.0 * i + 3, start_utc=None,
                            end_utc=None, time_source="mtime", clock_suspect=False, label="bird",
                            confidence=0.9, votes="{}", bundle_id="bundle-a", score=s) for i, s in enumerate(scores)]
    with Store(db) as store:
        store.commit_file(source, path=f"/data/{source}", size=10, mtime_ns=1, duration_s=60.0, start_utc=None,
                          time_source="mtime", clock_suspect=False, bundle_id="bundle-a", detections=detections)


def test_old_server_migrates_in_place_and_receives_scores(fleet, tmp_path):
    from edgemon.sync.fleetschema import SCHEMA_VERSION
    from edgemon.sync.fleetviews import VIEW_REVISIONS

    db = make_recorder(tmp_path / "a.db", "rec-a", files=5, per_file=5, seed=14)
    sync(db, fleet.url)
    with fleet.connect() as conn:   # back to a version 3 server that an older edgemon filled
        for revision in (VIEW_REVISIONS[0], VIEW_REVISIONS[2]):   # views that never read the lineage
            conn.execute(revision)
        conn.execute("DROP VIEW edgemon.detections_counted, edgemon.effort_hourly")   # revision 7's
        conn.execute("DROP VIEW edgemon.effort_daily_by_bundle")   # revision 8's (its table stays: rows held)
        conn.execute("DROP VIEW edgemon.effort_hourly_by_bundle")   # revision 9's
        conn.execute("DROP VIEW edgemon.lineage")   # revision 5's, which no version 3 server had
        conn.execute("ALTER TABLE edgemon.databases DROP COLUMN IF EXISTS acked_token, "
                     "DROP COLUMN IF EXISTS forked_from")
        conn.execute("ALTER TABLE edgemon.detections DROP COLUMN IF EXISTS score")
        conn.execute("DELETE FROM edgemon.schema_version WHERE version > 3")
        conn.execute("DROP TABLE edgemon.view_revision")   # and its views as first released
    add_scored_file(db, "rec-a/scored.wav", [0.25, 0.75])
    before = uuid_of(db)
    sync(db, fleet.url)
    assert uuid_of(db) == before            # an acknowledgement from before tokens is trusted, not forked
    with fleet.connect() as conn:
        assert conn.execute("SELECT max(version) FROM edgemon.schema_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT max(revision) FROM edgemon.view_revision").fetchone()[0] == len(VIEW_REVISIONS)
        scores = conn.execute("SELECT start_s, score FROM edgemon.detections WHERE source = 'rec-a/scored.wav' "
                              "ORDER BY start_s").fetchall()
        assert scores == [(0.0, 0.25), (3.0, 0.75)]
        assert_server_holds(conn, db)


def test_a_server_restored_from_its_backup_loses_the_rows_deleted_since(fleet, tmp_path):
    """A file re-processed after the server's backup: its old detections left the recorder, and
    their tombstones were forgotten once acknowledged, so the restored server kept them for good
    (a newcomer trial: 34 rows on the server against the recorder's 32)."""
    db = make_recorder(tmp_path / "r.db", "rec-r", files=6, per_file=5, seed=21)
    sync(db, fleet.url, "rec-r", batch_rows=10)
    u = uuid_of(db)
    with fleet.connect() as conn:    # the server's backup
        conn.execute("DROP TABLE IF EXISTS public.backup_detections")
        conn.execute("CREATE TABLE public.backup_detections AS SELECT * FROM edgemon.detections "
                     "WHERE db_uuid::text = %s", [u])
        acked = conn.execute("SELECT acked_seq, acked_token FROM edgemon.databases WHERE db_uuid::text = %s",
                             [u]).fetchone()
    work(db, "rec-r", range(2, 4), seed=22)           # two files re-processed: their old detections go
    sync(db, fleet.url, "rec-r", batch_rows=10)
    with fleet.connect() as conn:
        assert_server_holds(conn, db)
        conn.execute("DELETE FROM edgemon.detections WHERE db_uuid::text = %s", [u])   # restored
        conn.execute("INSERT INTO edgemon.detections SELECT * FROM public.backup_detections")
        conn.execute("UPDATE edgemon.databases SET acked_seq = %s, acked_token = %s WHERE db_uuid::text = %s",
                     [*acked, u])
        conn.execute("DROP TABLE public.backup_detections")
    sync(db, fleet.url, "rec-r", batch_rows=10)
    assert uuid_of(db) == u
    with fleet.connect() as conn:
        assert_server_holds(conn, db)


def test_the_token_the_server_holds_outlives_weeks_of_failed_batches(tmp_path, monkeypatch):
    """Each attempt at a batch offers a token; on a link failing mid-batch, 1,000 attempts pushed
    out the token of the last acknowledged batch, and the database then took itself for a
    restored backup and sent all its rows again under a new identity. Retries of one batch must
    not shorten the history either: one token per acknowledged sequence number is kept."""
    from edgemon.sync import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "KEPT_TOKENS", 3)   # stands for 1,000 sequence numbers
    db = make_recorder(tmp_path / "t.db", "rec-t", files=3, per_file=5, seed=23)
    with Outbox(db) as outbox:
        acknowledged = outbox.offer("fleet", 10)
        outbox.advance("fleet", 10)
        attempts = [outbox.offer("fleet", 15) for _ in range(20)]
        assert outbox.offered(acknowledged) and all(map(outbox.offered, attempts))
        outbox.advance("fleet", 15)                  # the last attempt went through
        outbox.offer("fleet", 20)
        outbox.advance("fleet", 20)
        outbox.offer("fleet", 25)
        assert outbox.offered(acknowledged) and outbox.offered(attempts[-1])
        assert not any(map(outbox.offered, attempts[:-1]))
        outbox.advance("fleet", 25)
        outbox.offer("fleet", 30)
        assert outbox.offered(acknowledged)          # three sequence numbers before the last acknowledged
        outbox.advance("fleet", 30)
        outbox.offer("fleet", 35)                    # four, all offered today: kept (90 days)
        assert outbox.offered(acknowledged)
        outbox.conn.execute("UPDATE sync_tokens SET offered_utc = '2024-01-01T00:00:00.000Z'")
        outbox.advance("fleet", 35)
        outbox.offer("fleet", 40)                    # five, months old: the oldest two go
        assert not outbox.offered(acknowledged) and not outbox.offered(attempts[-1])
        assert [r[0] for r in outbox.conn.execute("SELECT seq FROM sync_tokens ORDER BY seq")] == [20, 25, 30, 35, 40]


def test_a_target_whose_first_acknowledgement_was_lost_keeps_its_tombstones(fleet, tmp_path, monkeypatch):
    """The prune looked only at targets with a cursor: a server that committed a first session
    whose acknowledgement never reached the recorder holds a token but no cursor, and the
    tombstones after it were forgotten for another target's sake (a review)."""
    from edgemon.sync import outbox as outbox_module
    from edgemon.sync.outbox import OutboxError

    db = make_recorder(tmp_path / "r.db", "rec-r", files=6, per_file=5, seed=31)
    with Outbox(db) as o:                       # a second fleet server that took everything so far
        o.offer("other", o.last_seq())
        o.advance("other", o.last_seq())
    real_advance = Outbox.advance

    def lost(self, target, seq):
        if target != "other":
            raise OutboxError("connection lost before the acknowledgement was recorded")
        real_advance(self, target, seq)

    monkeypatch.setattr(Outbox, "advance", lost)
    with pytest.raises(OutboxError):
        sync(db, fleet.url, "rec-r", batch_rows=10_000)     # the server committed it all
    monkeypatch.setattr(Outbox, "advance", real_advance)
    u = uuid_of(db)
    work(db, "rec-r", range(2, 4), seed=32)     # re-processed: old detections leave as tombstones
    monkeypatch.setattr(outbox_module, "KEPT_TOKENS", 1)
    with Outbox(db) as o:
        for _ in range(2):
            o.offer("other", o.last_seq())
            o.advance("other", o.last_seq())
        assert o.prune() == 0
    sync(db, fleet.url, "rec-r", batch_rows=10_000)
    assert uuid_of(db) == u                      # its token was recognised: no fork
    with fleet.connect() as conn:
        assert_server_holds(conn, db)


def _recorder_clock(monkeypatch, at: str) -> None:
    """The recorder's wall clock reads ``at`` (a Pi without a real-time clock after a power cut)."""
    monkeypatch.setattr(edgemon.storage.store, "_now", lambda: at)


@pytest.mark.parametrize("clock_behind", [False, True])
def test_a_detection_a_restored_database_no_longer_finds_leaves_the_fleet_counts(fleet, tmp_path, monkeypatch,
                                                                                  clock_behind):
    """A review: after a restore (a new lineage), a recording analysed again and one detection no
    longer found was deleted under the new UUID only; the ancestor's copy kept counting in
    detections_daily (13 against the recorder's 12). Another review: revision 2 chose the copy by
    the recorder's clock, so a restored database whose clock was behind lost to its ancestor."""
    db = make_recorder(tmp_path / "a.db", "rec-a", files=6, per_file=5, seed=11)
    backup = copy_database(db, tmp_path / "backup.db")
    sync(db, fleet.url)
    with Store(db) as store:   # acknowledged history the backup lacks: the restored copy forks
        store.add_heartbeat(Heartbeat(run_id="after", mode="watch", device_id="rec-a", at_utc="2024-05-02T06:00:00Z",
                                      started_utc="2024-05-02T06:00:00Z", uptime_s=1.0))
    sync(db, fleet.url)
    old_uuid = uuid_of(db)
    restore(backup, db)
    if clock_behind:
        _recorder_clock(monkeypatch, "2023-01-01T00:00:00.000Z")
    with Store(db) as store:   # file 0 analysed again: two detections, where there were five
        add_file(store, "rec-a", 0, 2, random.Random(12))
    sync(db, fleet.url)
    assert uuid_of(db) != old_uuid
    with sqlite3.connect(db) as conn:
        held = conn.execute("SELECT count(*) FROM detections").fetchone()[0]
    with fleet.connect() as conn:
        counted = conn.execute("SELECT sum(detections) FROM edgemon.detections_daily_all WHERE site = 'rec-a'"
                               ).fetchone()[0]
        latest = conn.execute("SELECT sum(detections) FROM edgemon.detections_daily WHERE site = 'rec-a'").fetchone()[0]
    assert counted == latest == held


def _by_bundle(fleet) -> dict[str, int]:
    with fleet.connect() as conn:
        return dict(conn.execute("SELECT bundle_id, sum(detections)::int FROM edgemon.detections_daily_all "
                                 "WHERE site = 'rec-a' GROUP BY 1 ORDER BY 1").fetchall())


def test_a_restore_keeps_counting_what_only_the_ancestor_holds(fleet, tmp_path):
    """A review of the view above: another bundle's detections (`reanalyse` after the backup) and
    a recording the restored database could not read were dropped from the counts, because the
    restored database's ledger row for the recording was the newest."""
    db = make_recorder(tmp_path / "a.db", "rec-a", files=4, per_file=5, seed=21)
    backup = copy_database(db, tmp_path / "backup.db")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT source, start_s, end_s, start_utc, label, confidence FROM detections").fetchall()
    with Store(db) as store:   # `edgemon reanalyse --models adapted/` after the backup ...
        for source in sorted({r[0] for r in rows}):
            store.replace_detections(source, "bundle-b", [
                Detection(device_id="rec-a", source=s, start_s=a, end_s=e, start_utc=u, end_utc=None,
                          time_source="filename", clock_suspect=False, label=label, confidence=c, votes=None,
                          bundle_id="bundle-b") for s, a, e, u, label, c in rows if s == source])
        add_file(store, "rec-a", 6, 5, random.Random(3))   # ... and a recording analysed after it
    sync(db, fleet.url)
    before = _by_bundle(fleet)
    assert before == {"bundle-a": len(rows) + 5, "bundle-b": len(rows)}
    restore(backup, db)
    with Store(db) as store:   # the restored card's copy of that recording cannot be read
        store.record_failure("rec-a/20240501_000600.wav", path="/data/rec-a/20240501_000600.wav", size=1006,
                             mtime_ns=1, error="Input/output error", max_attempts=3)
    sync(db, fleet.url)
    assert _by_bundle(fleet) == before


def test_two_syncs_of_a_restored_database_at_once_fork_it_once(fleet, tmp_path):
    """Both sessions read the old UUID before either forks (a slow link delays the second's lock):
    the second must find the database forked and give up as busy, not fork it again and leave a
    lineage that never syncs."""
    db = make_recorder(tmp_path / "a.db", "rec-a", files=4, per_file=5, seed=1)
    sync(db, fleet.url)
    backup = copy_database(db, tmp_path / "backup.db")
    work(db, "rec-a", range(10, 14), seed=2)
    sync(db, fleet.url)
    old_uuid = uuid_of(db)
    restore(backup, db)
    info = DeviceInfo("rec-a", old_uuid)
    with Outbox(db) as first, Outbox(db) as second, fleet.connect() as conn1, fleet.connect() as conn2:
        forked, _ = _own_lineage(conn1, first, "fleet", info)
        assert forked.db_uuid != old_uuid
        with pytest.raises(BusyError, match="new sync identity"):
            _own_lineage(conn2, second, "fleet", info)
        with pytest.raises(IdentityMoved):
            second.fork()     # the compare-and-set itself, whatever calls it
    assert uuid_of(db) == forked.db_uuid
    assert sync(db, fleet.url).changes > 0
    with fleet.connect() as conn:
        forks = conn.execute("SELECT count(*) FROM edgemon.databases WHERE forked_from = %s", [old_uuid]).fetchone()[0]
    assert forks == 1


def test_the_views_show_the_bundle_the_recorder_runs_whatever_its_clock(fleet, tmp_path, monkeypatch):
    """A review: a bundle installed while the recorder's clock read 2023 was hidden behind the one
    before it (newest by the recorder's clock), and the effort table read as days without calls."""
    db = make_recorder(tmp_path / "a.db", "rec-a", files=3, per_file=5, seed=31)
    sync(db, fleet.url, bundle_id="bundle-a")
    _recorder_clock(monkeypatch, "2023-01-01T00:00:00.000Z")
    with Store(db) as store:
        for i in range(3):
            add_file(store, "rec-a", i, 4, random.Random(32 + i), bundle_id="bundle-b", start_day="2024-05-04")
    sync(db, fleet.url, bundle_id="bundle-b")
    with fleet.connect() as conn:
        shown = conn.execute("SELECT DISTINCT bundle_id FROM edgemon.detections_daily WHERE site = 'rec-a'").fetchall()
        days = conn.execute("SELECT min(day)::text FROM edgemon.detections_daily WHERE site = 'rec-a'").fetchone()[0]
    assert shown == [("bundle-b",)] and days == "2024-05-04"


def store_detections(db: Path) -> list[Detection]:
    """The database's detections as the recorder made them."""
    names = [f.name for f in dataclasses.fields(Detection)]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(f"SELECT {', '.join(names)} FROM detections").fetchall()
    return [Detection(**{**dict(zip(names, r)), "clock_suspect": bool(r[names.index("clock_suspect")])}) for r in rows]


def test_fleet_precision_counts_only_verdicts_on_detections_still_stored(fleet, tmp_path):
    """A review: after `reanalyse` no longer found two wrongly called detections, the review page
    said 1 of 1 right and the fleet's review_precision 1 of 3."""
    db = make_recorder(tmp_path / "a.db", "rec-a", files=1, per_file=3, seed=51)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, source FROM detections ORDER BY start_s").fetchall()
    for (detection_id, _), verdict in zip(rows, ("wrong", "wrong", "correct")):
        reviews.add_verdict(db, detection_id, verdict, "ann")
    stored = store_detections(db)
    with Store(db) as store:   # the same bundle again finds only the third
        store.replace_detections(rows[0][1], "bundle-a", [d for d in stored if d.start_s == max(x.start_s for x in stored)])
    page = {p.label: (p.correct, p.judged) for p in reviews.precision_by_class(db) if p.judged}
    sync(db, fleet.url)
    with fleet.connect() as conn:
        fleet_view = {label: (correct, judged) for label, correct, judged in conn.execute(
            "SELECT label, correct, judged FROM edgemon.review_precision WHERE site = 'rec-a'")}
    assert page == fleet_view and sum(j for _, j in page.values()) == 1


def _per_site(fleet) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Recordings (``effort_daily``), verdicts (``review_precision``) and detections per site."""
    with fleet.connect() as conn:
        files = dict(conn.execute("SELECT site, sum(files)::int FROM edgemon.effort_daily "
                                  "WHERE files > 0 GROUP BY 1").fetchall())
        judged = dict(conn.execute("SELECT site, sum(judged)::int FROM edgemon.review_precision GROUP BY 1").fetchall())
        found = dict(conn.execute("SELECT site, sum(detections)::int FROM edgemon.detections_daily_all "
                                  "GROUP BY 1").fetchall())
    return files, judged, found


@pytest.mark.parametrize("how", ["card cloned", "recorder renamed"])
def test_copied_rows_count_under_the_recorder_that_made_them(fleet, tmp_path, how):
    """A newcomer trial: a card imaged into a recorder under another device id (or a recorder
    renamed) sends its copied rows again under the new id. Detections carry their device id, but
    effort_daily showed the new id recording the old one's files, and review_precision counted
    3 verdicts as 6."""
    first = make_recorder(tmp_path / "first.db", "site-01", files=4, per_file=3, seed=61)
    with sqlite3.connect(first) as conn:
        judged = [r[0] for r in conn.execute("SELECT id FROM detections ORDER BY id LIMIT 3")]
    for detection_id, verdict in zip(judged, ("wrong", "wrong", "correct")):
        reviews.add_verdict(first, detection_id, verdict, "ann")
    sync(first, fleet.url, device_id="site-01")
    second = copy_database(first, tmp_path / "clone.db") if how == "card cloned" else first
    work(second, "site-02", range(20, 23), seed=62)
    sync(second, fleet.url, device_id="site-02")
    if how == "card cloned":                 # the first recorder records and syncs on
        work(first, "site-01", range(40, 42), seed=63)
        sync(first, fleet.url, device_id="site-01")
    made_by_first = 6 if how == "card cloned" else 4
    with sqlite3.connect(second) as conn:
        held = dict(conn.execute("SELECT device_id, count(*) FROM detections GROUP BY 1").fetchall())
    files, verdicts, found = _per_site(fleet)
    assert files == {"site-01": made_by_first, "site-02": 3}
    assert verdicts == {"site-01": 3}
    assert found["site-02"] == held["site-02"] == 15      # its own three recordings, five each


def test_a_clones_own_recording_under_a_name_the_first_also_used_counts_under_the_clone(fleet, tmp_path):
    """A review of view revision 4's first form: a recording was the ancestor's when the ancestor
    had finished one of its name, so a clone under a new id that records on the first recorder's
    schedule (AudioMoth names by start time) had all its hours counted under the first."""
    first = make_recorder(tmp_path / "first.db", "site-01", files=2, per_file=2, seed=71)
    sync(first, fleet.url, device_id="site-01")
    clone = copy_database(first, tmp_path / "clone.db")
    for db, device, mtime_ns in ((clone, "site-02", 7_000_000_001), (first, "site-01", 7_000_000_002)):
        with Store(db) as store:   # each recorder's own recording of 2024-06-02 00:00, same name and size
            store.commit_file("20240602_000000.WAV", path="/data/20240602_000000.WAV", size=5000, mtime_ns=mtime_ns,
                              duration_s=60.0, start_utc="2024-06-02T00:00:00Z", time_source="filename",
                              clock_suspect=False, bundle_id="bundle-a", detections=[])
        sync(db, fleet.url, device_id=device)
    files, _, _ = _per_site(fleet)
    assert files == {"site-01": 3, "site-02": 1}


def test_rows_stored_under_an_id_never_registered_count_under_their_recorder(fleet, tmp_path):
    """A review: a unit that recorded offline under the default id and first synced under its own
    sent its rows with the id they carry, which no database was registered under; the views joined
    on it and showed the recorder with its recordings but none of its 12 detections or 10 live
    minutes."""
    db = make_recorder(tmp_path / "a.db", "edgemon", files=3, per_file=4, seed=81, coverage_minutes=10)
    sync(db, fleet.url, device_id="site-07")
    files, _, found = _per_site(fleet)
    with fleet.connect() as conn:
        listened = dict(conn.execute("SELECT site, round(sum(listen_h) * 60)::int FROM edgemon.effort_daily "
                                     "WHERE listen_h > 0 GROUP BY 1").fetchall())
        shown = conn.execute("SELECT sum(detections)::int FROM edgemon.detections_daily WHERE site = 'site-07'"
                             ).fetchone()[0]
    assert found == {"site-07": 12} and shown == 12 and files == {"site-07": 3}
    assert listened == {"site-07": 9}                       # ten minutes of 55 s heard
    # An id some recorder was registered under keeps its rows (a rename after syncing: revision 4).
    other = make_recorder(tmp_path / "b.db", "site-08", files=2, per_file=2, seed=82, coverage_minutes=0)
    sync(other, fleet.url, device_id="site-08")
    work(other, "site-09", range(10, 11), seed=83)
    sync(other, fleet.url, device_id="site-09")
    _, _, found = _per_site(fleet)
    assert found == {"site-07": 12, "site-08": 4, "site-09": 5}


def test_offline_rows_stay_with_their_recorder_when_cloned_or_when_another_takes_the_default_id(fleet, tmp_path):
    """A review of view revision 5's first form (rows of unregistered ids under their database's
    device, any registered id as before): a card cloned into site-08 counted its copies of the
    offline rows under both sites, and the first unit that synced under the default id took every
    other site's offline rows; a site whose rows all carried the default id showed every bundle."""
    first = make_recorder(tmp_path / "first.db", "edgemon", files=3, per_file=4, seed=85, coverage_minutes=10)
    with Store(first) as store:                         # half of them by another bundle, the one it runs
        store.db.execute("UPDATE detections SET bundle_id = 'bundle-b' WHERE id > 6")
        store.db.conn.commit()
    sync(first, fleet.url, device_id="site-07", bundle_id="bundle-b")
    clone = copy_database(first, tmp_path / "clone.db")
    work(clone, "site-08", range(10, 11), seed=87)
    sync(clone, fleet.url, device_id="site-08", bundle_id="bundle-b")
    other = make_recorder(tmp_path / "other.db", "edgemon", files=1, per_file=1, seed=88, coverage_minutes=0)
    sync(other, fleet.url, device_id="edgemon")        # a careless unit under the default id
    files, _, found = _per_site(fleet)
    with fleet.connect() as conn:
        listened = dict(conn.execute("SELECT site, round(sum(listen_h) * 60)::int FROM edgemon.effort_daily "
                                     "WHERE listen_h > 0 GROUP BY 1").fetchall())
        newest = dict(conn.execute("SELECT site, sum(detections)::int FROM edgemon.detections_daily "
                                   "GROUP BY 1").fetchall())
    assert files == {"site-07": 3, "site-08": 1, "edgemon": 1}
    assert found == {"site-07": 12, "site-08": 5, "edgemon": 1}
    assert newest == {"site-07": 6, "site-08": 5, "edgemon": 1}   # the bundle site-07 reported only
    assert listened == {"site-07": 9}
    # Rebuilt, its rows under the default id again, and on bundle-c: site-07 shows bundle-c only,
    # not also the bundle an older database of it reported (a review of this view).
    rebuilt = make_recorder(tmp_path / "rebuilt.db", "edgemon", files=1, per_file=3, seed=89, coverage_minutes=0,
                            bundle_id="bundle-c")
    sync(rebuilt, fleet.url, device_id="site-07", bundle_id="bundle-c")
    with fleet.connect() as conn:
        shown = conn.execute("SELECT bundle_id, sum(detections)::int FROM edgemon.detections_daily "
                             "WHERE site = 'site-07' GROUP BY 1").fetchall()
    assert shown == [("bundle-c", 3)]


def test_recorder_health_is_not_held_by_a_heartbeat_from_the_future(fleet, tmp_path):
    """A review: one heartbeat dated 2031 (a clock set ahead once) stood as the last for years,
    with its state and disk over today's (50 MB free never flagged)."""
    db = make_recorder(tmp_path / "a.db", "rec-a", files=1, per_file=1, seed=84, heartbeats=0, coverage_minutes=0)
    with Store(db) as store:
        store.add_heartbeat(Heartbeat(run_id="ahead", mode="watch", device_id="rec-a", at_utc="2031-01-01T00:00:00Z",
                                      started_utc="2031-01-01T00:00:00Z", uptime_s=0.0, disk_free_mb=5000.0,
                                      state="ok"))
        store.add_heartbeat(Heartbeat(run_id="now", mode="watch", device_id="rec-a", at_utc="2024-05-02T00:00:00Z",
                                      started_utc="2024-05-02T00:00:00Z", uptime_s=0.0, disk_free_mb=50.0,
                                      state="stalled"))
    sync(db, fleet.url)
    with fleet.connect() as conn:
        conn.execute("UPDATE edgemon.databases SET disk_free_mb = 40")   # as measured at that sync
        conn.execute("UPDATE edgemon.detections SET start_utc = '2031-01-01T00:00:00Z' WHERE start_s = "
                     "(SELECT max(start_s) FROM edgemon.detections)")   # one dated years ahead
        last, state, free, detection = conn.execute(
            "SELECT last_heartbeat::date::text, last_state, disk_free_mb, last_detection::date::text "
            "FROM edgemon.recorder_health").fetchone()
    assert (last, state, free) == ("2024-05-02", "stalled", 40.0)
    assert detection is None or detection < "2030"
