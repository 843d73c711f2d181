"""The fleet views as a study's analyst reads them (psql, R, pandas): detections and effort per site
and local day, so that a rate per hour of effort is right on every day a recorder listened.

Recorders are real SQLite files written through ``Store``; the fleet database is a real PostgreSQL
server, migrated by a real sync session."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from edgemon.storage.rows import Detection
from edgemon.storage.store import Store
from edgemon.sync import fleetdb
from edgemon.sync.fleetdb import DeviceInfo
from edgemon.sync.fleetviews import VIEW_REVISIONS
from edgemon.sync.sender import SyncConfig, sync_once
from tests.test_sync import fleet, server  # noqa: F401  (fixtures: one server per module)

psycopg = pytest.importorskip("psycopg")


def record(store: Store, device_id: str, source: str, start_utc: str, duration_s: float,
           calls: list[tuple[float, str]], bundle_id: str = "bundle-a") -> None:
    """Commit recording ``source`` (``duration_s`` seconds from ``start_utc``) with a detection at
    each (offset in seconds, label) of ``calls``."""
    start = dt.datetime.fromisoformat(start_utc)
    detections = [Detection(device_id=device_id, source=source, start_s=s, end_s=s + 3.0,
                            start_utc=start + dt.timedelta(seconds=s), end_utc=None, time_source="filename", clock_suspect=False, label=label,
                            confidence=0.9, votes=None, bundle_id=bundle_id) for s, label in calls]
    store.commit_file(source, path=f"/data/{source}", size=len(source) * 1000, mtime_ns=1, duration_s=duration_s,
                      start_utc=start_utc, time_source="filename", clock_suspect=False, bundle_id=bundle_id,
                      detections=detections)


def sync(db: Path, url: str, device_id: str, timezone: str) -> None:
    sync_once(db, DeviceInfo(device_id, "", timezone=timezone), SyncConfig(url=url, snapshot=None))


def per_day(fleet, view: str, column: str) -> dict[str, float]:
    with fleet.connect() as conn:
        return {str(day): round(value, 4) for day, value in conn.execute(
            f"SELECT day, sum({column})::float8 FROM edgemon.{view} GROUP BY day ORDER BY day").fetchall()}


def test_a_recording_across_local_midnight_counts_its_hours_on_both_days(fleet, tmp_path, monkeypatch):
    """An AudioMoth naming files in UTC, at a site in Kuching (UTC+8): a recording from 23:59:30 to
    00:01:09 local has a call on each side of midnight. Before view revision 6, effort_daily put its
    99 s on the first day, and the second day had a detection and no effort at all (its rate per
    hour of effort divided by zero; the first day's too low). A fleet database at revision 5
    migrates at the next sync."""
    db = tmp_path / "kuching.db"
    with Store(db) as store:
        record(store, "kuching-01", "20250302_155930.WAV", "2025-03-02T15:59:30Z", 99.0,
               [(3.9, "gibbon"), (45.0, "argus")])
        record(store, "kuching-01", "20250302_213000.WAV", "2025-03-02T21:30:00Z", 60.0, [(10.0, "gibbon")])
    monkeypatch.setattr(fleetdb, "VIEW_REVISIONS", VIEW_REVISIONS[:5])   # a server of the release before
    sync(db, fleet.url, "kuching-01", "Asia/Kuching")
    assert per_day(fleet, "detections_daily", "detections") == {"2025-03-02": 1, "2025-03-03": 2}
    assert per_day(fleet, "effort_daily", "recorded_h * 3600") == {"2025-03-02": 99.0, "2025-03-03": 60.0}

    monkeypatch.setattr(fleetdb, "VIEW_REVISIONS", VIEW_REVISIONS)
    sync(db, fleet.url, "kuching-01", "Asia/Kuching")
    assert per_day(fleet, "effort_daily", "recorded_h * 3600") == {"2025-03-02": 30.0, "2025-03-03": 129.0}
    assert per_day(fleet, "effort_daily", "effort_h * 3600") == {"2025-03-02": 30.0, "2025-03-03": 129.0}
    assert per_day(fleet, "effort_daily", "files") == {"2025-03-02": 1, "2025-03-03": 1}   # where each began


def test_a_recording_across_a_summer_time_change_is_cut_at_the_local_midnight(fleet, tmp_path):
    """New York, the night summer time begins (2025-03-09, a day of 23 hours): a recording of
    three hours from 22:00 local (03:00 UTC) holds two hours of the 8th and one of the 9th, found
    in UTC; one that ends on a midnight adds no empty day."""
    db = tmp_path / "ny.db"
    with Store(db) as store:
        record(store, "ny-01", "20250309_030000.WAV", "2025-03-09T03:00:00Z", 3 * 3600.0, [(60.0, "gibbon")])
        record(store, "ny-01", "20250310_030000.WAV", "2025-03-10T03:00:00Z", 3600.0, [])   # 23:00-00:00 EDT
    sync(db, fleet.url, "ny-01", "America/New_York")
    assert per_day(fleet, "effort_daily", "recorded_h") == {"2025-03-08": 2.0, "2025-03-09": 2.0}


def test_calls_and_effort_per_local_hour_add_up_to_the_daily_views(fleet, tmp_path):
    """Calls per species, site, local day and hour, and hours of effort per local hour: the hourly
    views hold what the daily ones count, each detection once, a reanalysed bundle's rows apart
    (``current``). New York: the hour repeated when summer time ends (01:00 local, 2025-11-02)
    holds both of its halves; Kuching: a recording across 23:00 local is cut there."""
    ny, kuching = tmp_path / "ny.db", tmp_path / "kuching.db"
    with Store(ny) as store:
        record(store, "ny-01", "20251102_050000.WAV", "2025-11-02T05:00:00Z", 2 * 3600.0,   # 01:00 EDT to 01:00 EST
               [(60.0, "gibbon"), (3660.0, "gibbon")])
        record(store, "ny-01", "20251102_050000.WAV", "2025-11-02T05:00:00Z", 2 * 3600.0, [(61.0, "gibbon")],
               bundle_id="bundle-b")                                                       # reanalysed
    with Store(kuching) as store:
        record(store, "kuching-01", "20250302_145000.WAV", "2025-03-02T14:50:00Z", 1200.0,   # 22:50 to 23:10
               [(30.0, "argus"), (900.0, "argus"), (960.0, "gibbon")])
    sync(ny, fleet.url, "ny-01", "America/New_York")
    sync(kuching, fleet.url, "kuching-01", "Asia/Kuching")
    with fleet.connect() as conn:
        hourly = conn.execute("SELECT site, day::text, hour, round(recorded_h::numeric, 4)::float8 "
                              "FROM edgemon.effort_hourly ORDER BY 1, 2, 3").fetchall()
        calls = conn.execute("SELECT site, species, day::text, hour, bundle_id, count(*) FROM edgemon.detections_counted "
                             "WHERE current GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4").fetchall()
        every = conn.execute("SELECT bundle_id, hour, count(*) FROM edgemon.detections_counted WHERE site = 'ny-01' "
                             "GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        by_day = conn.execute("SELECT site, species, day, count(*) FROM edgemon.detections_counted WHERE current "
                              "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3").fetchall()
        daily = conn.execute("SELECT site, species, day, detections FROM edgemon.detections_daily "
                             "ORDER BY 1, 2, 3").fetchall()
        effort = conn.execute("SELECT (SELECT round(sum(effort_h)::numeric, 6) FROM edgemon.effort_hourly), "
                              "(SELECT round(sum(effort_h)::numeric, 6) FROM edgemon.effort_daily)").fetchone()
    assert hourly == [("kuching-01", "2025-03-02", 22, 0.1667), ("kuching-01", "2025-03-02", 23, 0.1667),
                      ("ny-01", "2025-11-02", 1, 2.0)]
    assert calls == [("kuching-01", "argus", "2025-03-02", 22, "bundle-a", 1),
                     ("kuching-01", "argus", "2025-03-02", 23, "bundle-a", 1),
                     ("kuching-01", "gibbon", "2025-03-02", 23, "bundle-a", 1),
                     ("ny-01", "gibbon", "2025-11-02", 1, "bundle-b", 1)]   # the newest bundle's
    assert every == [("bundle-a", 1, 2), ("bundle-b", 1, 1)]   # both calls of the repeated hour in 01 h
    assert by_day == daily and effort[0] == effort[1]


def test_recordings_timed_to_overlap_leave_no_negative_gap(fleet, tmp_path):
    """A recording whose start lies a millisecond before the previous one's end (times rounded to
    the millisecond, durations from the samples): ``fleet status`` printed its longest gap as -0.00 h."""
    db = tmp_path / "site.db"
    with Store(db) as store:
        record(store, "site-01", "20250302_000000.WAV", "2025-03-02T00:00:00Z", 60.001, [])
        record(store, "site-01", "20250302_000100.WAV", "2025-03-02T00:01:00Z", 60.0, [])
    sync(db, fleet.url, "site-01", "UTC")
    with fleet.connect() as conn:
        gaps = conn.execute("SELECT longest_gap_h FROM edgemon.effort_daily").fetchall()
    assert gaps == [(0.0,)], gaps


def test_each_bundle_s_hours_are_the_recordings_it_analysed(fleet, tmp_path, caplog, monkeypatch):
    """A site's recordings still on the card reanalysed with a new bundle (the first day's already
    deleted), then the site switched to it: the ledger knows only watch's bundle, so the days the
    new bundle never analysed showed effort and no calls. The recorder's ``analyses`` now travel,
    and ``effort_daily_by_bundle`` gives each bundle the hours it analysed. A server whose views the
    syncing role could not revise (no ``analyses`` table) still takes the rest, says so, and gets the
    analyses once it holds the table."""
    db = tmp_path / "lima.db"
    days = [("20250301_110000.WAV", "2025-03-01T11:00:00Z"), ("20250302_110000.WAV", "2025-03-02T11:00:00Z"),
            ("20250303_110000.WAV", "2025-03-03T11:00:00Z")]
    with Store(db) as store:
        for source, start in days:
            record(store, "lima-02", source, start, 600.0, [(30.0, "gibbon")])
    with monkeypatch.context() as m:   # a server without revision 8 (a role that may not add it)
        m.setattr(fleetdb, "VIEW_REVISIONS", VIEW_REVISIONS[:7])
        sync(db, fleet.url, "lima-02", "UTC")
    assert "no edgemon.analyses table yet" in caplog.text
    with fleet.connect() as conn:
        assert conn.execute("SELECT count(*) FROM edgemon.detections").fetchone()[0] == 3
    with Store(db) as store:
        for source, start in days[1:]:
            when = dt.datetime.fromisoformat(start) + dt.timedelta(seconds=40)
            store.replace_detections(source, "bundle-b", [Detection(
                device_id="lima-02", source=source, start_s=40.0, end_s=43.0, start_utc=when, end_utc=None,
                time_source="filename", clock_suspect=False, label="gibbon", confidence=0.8, votes=None,
                bundle_id="bundle-b")], 600.0)
    sync(db, fleet.url, "lima-02", "UTC")
    with fleet.connect() as conn:
        by_bundle = conn.execute("SELECT bundle_id, day::text, files, round(recorded_h::numeric, 4)::float8 "
                                 "FROM edgemon.effort_daily_by_bundle ORDER BY 1, 2").fetchall()
        calls = conn.execute("SELECT day::text, detections FROM edgemon.detections_daily ORDER BY 1").fetchall()
    assert by_bundle == [("bundle-a", "2025-03-01", 1, 0.1667), ("bundle-a", "2025-03-02", 1, 0.1667),
                         ("bundle-a", "2025-03-03", 1, 0.1667),   # sent once the server held the table
                         ("bundle-b", "2025-03-02", 1, 0.1667), ("bundle-b", "2025-03-03", 1, 0.1667)], by_bundle
    assert calls == [("2025-03-02", 1), ("2025-03-03", 1)]   # the current bundle's, on the days it analysed
    with fleet.connect() as conn:   # the README's query: a bundle's calls per hour of its own effort
        rates = conn.execute("""SELECT d.site, d.species, d.day, d.detections, e.recorded_h, d.detections / nullif(e.recorded_h, 0) AS per_h
FROM edgemon.detections_daily d
JOIN edgemon.effort_daily_by_bundle e USING (site, bundle_id, day);""").fetchall()
    assert sorted((str(day), round(per_h, 3)) for _, _, day, _, _, per_h in rates) == [
        ("2025-03-02", 6.0), ("2025-03-03", 6.0)]


def test_a_recorder_that_sends_no_analyses_has_its_bundles_hours_beside_upgraded_ones(fleet, tmp_path):
    """Found upgrading a fleet one recorder at a time: a recorder of the release before syncs on
    beside upgraded ones but sends no ``analyses``. Counted by its analyses alone it had no hours per bundle, and the
    README's rate per bundle hour (a join on ``effort_daily_by_bundle``) dropped every one of its
    detections. Its hours now count under the ledger's bundle and each bundle with detections of the
    recording, as recorder migration m014 fills ``analyses``."""
    upgraded, before = tmp_path / "upgraded.db", tmp_path / "before.db"
    days = [("20250301_110000.WAV", "2025-03-01T11:00:00Z"), ("20250302_110000.WAV", "2025-03-02T11:00:00Z")]
    with Store(upgraded) as store:
        record(store, "site-01", *days[0], 600.0, [(30.0, "gibbon")])
    with Store(before) as store:
        for source, start in days:
            record(store, "site-02", source, start, 600.0, [(30.0, "gibbon")])
        when = dt.datetime.fromisoformat(days[1][1]) + dt.timedelta(seconds=40)
        store.replace_detections(days[1][0], "bundle-b", [Detection(
            device_id="site-02", source=days[1][0], start_s=40.0, end_s=43.0, start_utc=when, end_utc=None,
            time_source="filename", clock_suspect=False, label="gibbon", confidence=0.8, votes=None,
            bundle_id="bundle-b")], 600.0)
    with contextlib.closing(sqlite3.connect(before)) as conn, conn:
        conn.execute("DELETE FROM analyses")   # on the server, as the release before's sync leaves it: none
    sync(upgraded, fleet.url, "site-01", "UTC")
    sync(before, fleet.url, "site-02", "UTC")
    with fleet.connect() as conn:
        assert conn.execute("SELECT count(*) FROM edgemon.analyses").fetchone()[0] == 1   # the upgraded one's
        by_bundle = conn.execute("SELECT site, bundle_id, day::text, files, round(recorded_h::numeric, 4)::float8 "
                                 "FROM edgemon.effort_daily_by_bundle ORDER BY 1, 2, 3").fetchall()
        rates = conn.execute("""SELECT d.site, d.species, d.day, d.detections, e.recorded_h, d.detections / nullif(e.recorded_h, 0) AS per_h
FROM edgemon.detections_daily d
JOIN edgemon.effort_daily_by_bundle e USING (site, bundle_id, day);""").fetchall()
    assert by_bundle == [("site-01", "bundle-a", "2025-03-01", 1, 0.1667),
                         ("site-02", "bundle-a", "2025-03-01", 1, 0.1667), ("site-02", "bundle-a", "2025-03-02", 1, 0.1667),
                         ("site-02", "bundle-b", "2025-03-02", 1, 0.1667)], by_bundle
    assert sorted((site, str(day), round(per_h, 3)) for site, _, day, _, _, per_h in rates) == [
        ("site-01", "2025-03-01", 6.0), ("site-02", "2025-03-02", 6.0)]


def test_a_role_granted_the_tables_before_analyses_keeps_syncing_and_sends_them_once_granted(fleet, tmp_path,
                                                                                            caplog):
    """Found by a review: a role that writes rows but does not own the schema was granted the
    tables there were (``GRANT ... ON ALL TABLES``); the owner's sync then added ``analyses``, which
    the role may not read or write, and every sync of its recorders failed at the staging tables
    ("permission denied for table analyses") instead of going on without the analyses."""
    from urllib.parse import urlsplit, urlunsplit

    owner_db, db = tmp_path / "owner.db", tmp_path / "writer.db"
    with Store(owner_db) as store:
        record(store, "site-01", "20250301_110000.WAV", "2025-03-01T11:00:00Z", 600.0, [(30.0, "gibbon")])
    with Store(db) as store:
        record(store, "site-02", "20250301_110000.WAV", "2025-03-01T11:00:00Z", 600.0, [(30.0, "gibbon")])
    with monkeypatch_revisions(VIEW_REVISIONS[:7]):   # the tables as the release before left them
        sync(owner_db, fleet.url, "site-01", "UTC")
    with fleet.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS rows_only")
        conn.execute("CREATE ROLE rows_only LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA edgemon TO rows_only")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA edgemon TO rows_only")
        conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA edgemon TO rows_only")
    sync(owner_db, fleet.url, "site-01", "UTC")   # the owner revises: analyses is added, not granted
    parts = urlsplit(fleet.url)
    as_writer = urlunsplit(parts._replace(netloc=f"rows_only@{parts.hostname}:{parts.port}"))
    try:
        sync(db, as_writer, "site-02", "UTC")
        assert "may not write the fleet database's edgemon.analyses" in caplog.text, caplog.text
        with fleet.connect() as conn:
            def sent(table: str) -> int:
                return conn.execute(f"SELECT count(*) FROM edgemon.{table} t JOIN edgemon.databases db "
                                    f"USING (db_uuid) WHERE db.device_id = 'site-02'").fetchone()[0]
            assert (sent("detections"), sent("files"), sent("analyses")) == (1, 1, 0)
            conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON edgemon.analyses TO rows_only")
            sync(db, as_writer, "site-02", "UTC")
            assert sent("analyses") == 1
    finally:
        with fleet.connect() as conn:
            conn.execute("DROP SCHEMA IF EXISTS edgemon CASCADE")
            conn.execute("DROP OWNED BY rows_only")
            conn.execute("DROP ROLE rows_only")


@contextlib.contextmanager
def monkeypatch_revisions(revisions: tuple[str, ...]):
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fleetdb, "VIEW_REVISIONS", revisions)
        yield


def test_each_bundle_s_hours_per_local_hour_are_the_recordings_it_analysed(fleet, tmp_path):
    """A season trial: two dawns at 06 h, the first one's recording gone from the card before a new
    bundle reanalysed the season. ``effort_hourly`` counts both dawns, so the new bundle's calls at
    06 h were divided by an hour it never heard (its rate halved); ``effort_hourly_by_bundle`` gives
    each bundle the hours it analysed, as the review page's chart of that bundle draws them."""
    db = tmp_path / "dawn.db"
    with Store(db) as store:
        record(store, "dawn-01", "20250301_220000.WAV", "2025-03-01T22:00:00Z", 1800.0, [(60.0, "gibbon")])
        record(store, "dawn-01", "20250302_220000.WAV", "2025-03-02T22:00:00Z", 1800.0, [(60.0, "gibbon")])
        store.replace_detections("20250302_220000.WAV", "bundle-b", [Detection(
            device_id="dawn-01", source="20250302_220000.WAV", start_s=61.0, end_s=64.0,
            start_utc=dt.datetime.fromisoformat("2025-03-02T22:01:01+00:00"), end_utc=None, time_source="filename",
            clock_suspect=False, label="gibbon", confidence=0.8, votes=None, bundle_id="bundle-b")], 1800.0)
    sync(db, fleet.url, "dawn-01", "Asia/Kuching")
    with fleet.connect() as conn:
        hourly = conn.execute("SELECT bundle_id, day::text, hour, round(recorded_h::numeric, 4)::float8 "
                              "FROM edgemon.effort_hourly_by_bundle ORDER BY 1, 2, 3").fetchall()
        calls = conn.execute("SELECT bundle_id, hour, count(*) FROM edgemon.detections_counted WHERE current "
                             "GROUP BY 1, 2").fetchall()
        own = conn.execute("SELECT hour, sum(recorded_h) FROM edgemon.effort_hourly_by_bundle "
                           "WHERE bundle_id = 'bundle-b' GROUP BY 1").fetchall()
        every = conn.execute("SELECT hour, sum(recorded_h) FROM edgemon.effort_hourly GROUP BY 1").fetchall()
        daily = conn.execute("SELECT bundle_id, sum(recorded_h) FROM edgemon.effort_daily_by_bundle GROUP BY 1 "
                             "ORDER BY 1").fetchall()
    assert hourly == [("bundle-a", "2025-03-02", 6, 0.5), ("bundle-a", "2025-03-03", 6, 0.5),
                      ("bundle-b", "2025-03-03", 6, 0.5)]
    assert calls == [("bundle-b", 6, 1)]   # the current bundle's one call at 06 h
    assert own == [(6, 0.5)] and every == [(6, 1.0)]   # in its own half hour, not in both dawns' hour
    assert [(b, round(h, 4)) for b, h in daily] == [("bundle-a", 1.0), ("bundle-b", 0.5)]   # the days agree


def test_a_triggered_recording_s_audio_is_laid_over_the_time_it_spans(fleet, tmp_path, caplog):
    """A season trial: a triggered AudioMoth recording leaves its silences out, so its 100 s of audio
    span 200 s, from 23:59:00 to 00:02:20 in Kuching. The fleet laid its audio from its start (60 s
    on the first day, 40 s on the next), where the recorder's export lays it over its span (30 s and
    70 s), and counted the gap to the next recording from the audio's end. ``files.span_s`` now
    travels; a server without the column takes the rest, says so, and gets the spans once it holds it."""
    db = tmp_path / "triggered.db"
    with Store(db) as store:
        store.commit_file("20250302_155900T.WAV", path="/data/20250302_155900T.WAV", size=1000, mtime_ns=1,
                          duration_s=100.0, start_utc="2025-03-02T15:59:00Z", time_source="filename",
                          clock_suspect=False, bundle_id="bundle-a", detections=[], span_s=200.0)
        record(store, "kuching-02", "20250302_161000.WAV", "2025-03-02T16:10:00Z", 60.0, [(10.0, "gibbon")])

    def effort() -> tuple[dict, dict, list, list, list]:
        with fleet.connect() as conn:
            return (per_day(fleet, "effort_daily", "recorded_h * 3600"),
                    per_day(fleet, "effort_daily_by_bundle", "recorded_h * 3600"),
                    conn.execute("SELECT day::text, hour, round((recorded_h * 3600)::numeric, 4)::float8 "
                                 "FROM edgemon.effort_hourly ORDER BY 1, 2").fetchall(),
                    conn.execute("SELECT day::text, hour, round((recorded_h * 3600)::numeric, 4)::float8 "
                                 "FROM edgemon.effort_hourly_by_bundle ORDER BY 1, 2").fetchall(),
                    conn.execute("SELECT day::text, round((longest_gap_h * 3600)::numeric, 4)::float8 "
                                 "FROM edgemon.effort_daily ORDER BY 1").fetchall())

    with monkeypatch_revisions(VIEW_REVISIONS[:9]):   # a server of the release before
        sync(db, fleet.url, "kuching-02", "Asia/Kuching")
    assert "no edgemon.files.span_s column yet" in caplog.text, caplog.text
    assert effort()[0] == {"2025-03-02": 60.0, "2025-03-03": 100.0}   # laid from its start, as before
    sync(db, fleet.url, "kuching-02", "Asia/Kuching")   # the owner's sync revises the views
    with fleet.connect() as conn:
        assert conn.execute("SELECT source, span_s FROM edgemon.files ORDER BY 1").fetchall() == [
            ("20250302_155900T.WAV", 200.0), ("20250302_161000.WAV", None)]   # sent again once it could be
    daily, by_bundle, hourly, hourly_by_bundle, gaps = effort()
    assert daily == by_bundle == {"2025-03-02": 30.0, "2025-03-03": 130.0}
    assert hourly == hourly_by_bundle == [("2025-03-02", 23, 30.0), ("2025-03-03", 0, 130.0)]
    assert gaps == [("2025-03-02", 0.0), ("2025-03-03", 460.0)]   # 00:02:20 to 00:10:00, not from 00:00:40


def test_spans_sent_by_the_edgemon_before_reach_the_server_after_the_upgrade(fleet, tmp_path):
    """A review of view revision 10: a recorder of the release before (which had ``files.span_s``
    since m016 but sent no spans, knowing no such column on the server) synced a season of
    triggered recordings; upgraded, it syncs to a server its owner migrated first (or that its own
    sync migrates). No note said a server had lacked the column, so those spans were never sent and
    the recording stayed laid from its start for good."""
    db = tmp_path / "upgraded.db"
    with Store(db) as store:
        store.commit_file("20250302_155900T.WAV", path="/data/20250302_155900T.WAV", size=1000, mtime_ns=1,
                          duration_s=100.0, start_utc="2025-03-02T15:59:00Z", time_source="filename",
                          clock_suspect=False, bundle_id="bundle-a", detections=[], span_s=200.0)
    with monkeypatch_revisions(VIEW_REVISIONS[:9]), pytest.MonkeyPatch.context() as m:
        m.setattr(fleetdb, "ADDED_COLUMNS", {})   # the edgemon before: no column of a revision to send
        sync(db, fleet.url, "kuching-03", "Asia/Kuching")
    sync(db, fleet.url, "kuching-03", "Asia/Kuching")   # upgraded: its sync revises the views first
    with fleet.connect() as conn:
        assert conn.execute("SELECT span_s FROM edgemon.files f JOIN edgemon.databases USING (db_uuid) "
                            "WHERE device_id = 'kuching-03'").fetchall() == [(200.0,)]
    assert per_day(fleet, "effort_daily", "recorded_h * 3600") == {"2025-03-02": 30.0, "2025-03-03": 70.0}
    with contextlib.closing(sqlite3.connect(db)) as conn:
        queued = conn.execute("SELECT seq FROM changes WHERE tbl = 'files'").fetchall()
        sync(db, fleet.url, "kuching-03", "Asia/Kuching")   # and once only: not queued again at each sync
        assert conn.execute("SELECT seq FROM changes WHERE tbl = 'files'").fetchall() == queued
