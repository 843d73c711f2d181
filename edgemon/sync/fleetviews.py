"""The fleet views revised after release (``VIEW_REVISIONS``), apart from the versioned tables and
first views of ``edgemon.sync.fleetschema``: a recorder of an earlier edgemon checks the table
version only, so a revised view never stops it syncing. ``edgemon.sync.fleetdb`` applies them;
nothing here talks to a server. A revision is never edited once released, only appended
(``tests/test_fleetschema_frozen.py``).
"""

from __future__ import annotations

from edgemon.sync.fleetschema import (FILE_EFFORT, NEWEST_BUNDLE, SCHEMA, detections_daily_sql, recorder_health_sql,
                                      review_precision_sql)

# Views revised after release, counted apart from the table versions (revision n is
# ``VIEW_REVISIONS[n - 1]``, recorded in ``view_revision``): a recorder of an earlier edgemon
# checks the table version only, so a revised view never stops it syncing. Each revision is
# CREATE OR REPLACE VIEW with the same columns, which keeps the view's grants.
#
# 1: a live minute counts once per device in ``effort_daily``, as a file does (a restored backup
# or a cloned card sends its copied coverage again under a new UUID, and a trial saw 0.127 h of
# listening where there was 0.066): the most any of its rows heard, and what they lost beyond
# that, up to the minute's end. Not the latest row: a restored database books the time since its
# backup as the daemon's loss, over the minutes the first card heard (a review).
_COVERAGE_BY_ROW_ID = ("device_id", f"""FROM {SCHEMA}.coverage GROUP BY device_id, source, minute_utc""")


def _effort_once_per_minute(file_effort: str, coverage: tuple[str, str] = _COVERAGE_BY_ROW_ID) -> str:
    site, coverage_from = coverage
    return f"""
CREATE OR REPLACE VIEW {SCHEMA}.effort_daily AS
SELECT site, day, sum(listen_h) AS listen_h, sum(lost_h) AS lost_h, sum(files)::bigint AS files,
       sum(recorded_h) AS recorded_h, max(longest_gap_h) AS longest_gap_h,
       sum(listen_h) + sum(recorded_h) AS effort_h
FROM (
    SELECT c.device_id AS site, (c.minute_utc AT TIME ZONE b.timezone)::date AS day,
           sum(c.analysed_s) / 3600 AS listen_h, sum(c.lost_s) / 3600 AS lost_h,
           0 AS files, 0.0::float8 AS recorded_h, 0.0::float8 AS longest_gap_h
    FROM (SELECT {site}, minute_utc, max(analysed_s) AS analysed_s,
                 greatest(0.0, least(max(lost_overflow_s + lost_dropped_s + lost_device_s + lost_daemon_s),
                                     60 - max(analysed_s))) AS lost_s
          {coverage_from}) c
    JOIN {SCHEMA}.device_bundle b USING (device_id)
    GROUP BY 1, 2
    UNION ALL
{file_effort}"""


_EFFORT_ONCE_PER_MINUTE = _effort_once_per_minute(FILE_EFFORT)

# 2: a recording's detections of a bundle count from one database only: the one whose finished
# ledger row for it, analysed with that bundle, is newest (ties, as a restored copy's rows of
# recordings it had already analysed, to the newest database). A restored or rebuilt database
# sends everything again under a new UUID; what it then analyses again and no longer finds was
# deleted under its UUID only, and the ancestor's copy kept counting (a review). Detections of
# another bundle than the ledger's (``reanalyse``), of a recording the newer database could not
# read, and of live sources (no ledger rows) count as before. Stale copies are left out by an
# anti-join on their (usually empty) set: only devices with more than one database can have any
# (a join on each recording's current database took 2.6x as long on the bench).
def _from_current(order: str) -> str:
    """``d``'s detections are no stale copy: no other database of the device holds a finished
    ledger row of its recording and bundle that comes first by ``order``."""
    stale = f"""(SELECT db_uuid, source, bundle_id FROM (
          SELECT f.db_uuid, f.source, f.bundle_id,
                 row_number() OVER (PARTITION BY db.device_id, f.source, f.bundle_id
                                    ORDER BY {order}) AS nth
          FROM {SCHEMA}.files f JOIN {SCHEMA}.databases db USING (db_uuid)
          WHERE f.state = 'done'
            AND db.device_id IN (SELECT device_id FROM {SCHEMA}.databases GROUP BY device_id HAVING count(*) > 1)) r
       WHERE nth > 1)"""
    return (f"NOT EXISTS (SELECT 1 FROM {stale} s WHERE s.db_uuid = d.db_uuid AND s.source = d.source "
            f"AND s.bundle_id = d.bundle_id)")


_FROM_CURRENT = _from_current("f.updated_at DESC NULLS LAST, db.first_sync DESC")


_DETECTIONS_FROM_ONE_DATABASE = (
    detections_daily_sql("detections_daily_all", _FROM_CURRENT, "CREATE OR REPLACE VIEW")
    + detections_daily_sql("detections_daily", f"({NEWEST_BUNDLE}) AND {_FROM_CURRENT}",
                        "CREATE OR REPLACE VIEW"))

# 3: decided by the server's clock, not the recorder's (a review). A Pi without a real-time clock
# may run for days at a time in the past (fake-hwclock after a power cut), and its rows' times
# then sort before older ones:
# - ``device_bundle``: the bundle the recorder reported at its latest sync (the one it runs), when
#   it stored detections of it; else, as before, the bundle of its latest stored detection. Before,
#   a bundle installed while the clock read 2023 stayed hidden behind the one before it.
# - which database's copy of a recording counts (revision 2): the database that first synced
#   latest (a restored or rebuilt copy's new lineage), then the newest ledger row.
# - ``review_precision``: only verdicts on detections still stored on the device (outside
#   revision 2's stale copies), as ``edgemon review`` counts them: a detection that ``reanalyse``
#   no longer finds leaves its verdicts behind, and they counted here and not on the page. Found
#   through the device's databases by the detections' key (0.39 s on 40 000 reviews and 500 000
#   detections; a first form, the databases asked of every detection, took 1.45 s, a review).
# An index on (device_id, bundle_id, created_at) finds the reported bundle's newest detection, and
# none is looked for when none is reported: a bundle with no detection yet read every detection of
# the device (1.2 s on 500k, a review). Where the table holds one bundle only, the planner still
# reads the device's detections newest first for one just installed (0.25 s on 500k).
_FROM_CURRENT_BY_SYNC = _from_current("db.first_sync DESC, f.updated_at DESC NULLS LAST")
_BY_THE_SERVERS_CLOCK = f"""
CREATE INDEX IF NOT EXISTS detections_device_bundle ON {SCHEMA}.detections (device_id, bundle_id, created_at);
CREATE OR REPLACE VIEW {SCHEMA}.device_bundle AS
SELECT DISTINCT ON (db.device_id) db.device_id, coalesce(reported.bundle_id, newest.bundle_id) AS bundle_id,
       coalesce(db.timezone, 'UTC') AS timezone, db.latitude, db.longitude
FROM {SCHEMA}.databases db
LEFT JOIN LATERAL (SELECT d.bundle_id FROM {SCHEMA}.detections d
                   WHERE db.bundle_id IS NOT NULL AND d.device_id = db.device_id AND d.bundle_id = db.bundle_id
                   ORDER BY d.created_at DESC LIMIT 1) reported ON true
LEFT JOIN LATERAL (SELECT d.bundle_id FROM {SCHEMA}.detections d WHERE d.device_id = db.device_id
                   ORDER BY d.created_at DESC LIMIT 1) newest ON true
ORDER BY db.device_id, db.last_sync DESC;
""" + detections_daily_sql("detections_daily_all", _FROM_CURRENT_BY_SYNC, "CREATE OR REPLACE VIEW") \
    + detections_daily_sql("detections_daily", f"({NEWEST_BUNDLE}) AND {_FROM_CURRENT_BY_SYNC}",
                        "CREATE OR REPLACE VIEW") \
    + review_precision_sql("CREATE OR REPLACE VIEW", f"""
            WHERE EXISTS (SELECT 1 FROM {SCHEMA}.databases o JOIN {SCHEMA}.detections d ON d.db_uuid = o.db_uuid
                              AND d.source = r.source AND d.start_s = r.start_s AND d.label = r.label
                              AND d.bundle_id = r.bundle_id
                          WHERE o.device_id = db.device_id AND {_FROM_CURRENT_BY_SYNC})""")


# 4: a copied row counts under the recorder that made it (a newcomer trial). A card imaged into a
# recorder under another device id, or a recorder renamed, starts a new lineage under the new id
# and sends its copied rows again. Its detections always counted under the device that stored them
# (each row carries its device id), but the files ledger and the reviews carry none, and counted
# under the database's device too: 3 verdicts as 6, and the new id shown recording the old one's
# hours while hearing nothing.
# - ``effort_daily``: a recording counts under the device of the earliest database in its
#   database's ``forked_from`` lineage that finished it (the one that analysed it), else its own.
#   The same recording: the same name, size and modification time (the copied ledger row); a
#   clone's own later recording under a name the first recorder also used (AudioMoths on one
#   schedule) is the clone's (a review of the first form, by name alone, lost the clone's hours).
# - ``review_precision``: a verdict counts under the device id of the detection it judges, found in
#   the verdict's own database (the database's device when the detection is gone from it).
# Lineages are short (one database per restore, clone or rename): the walk is over a handful of
# rows, and the ancestors' ledgers are joined once, not asked per file (6x as long), nor the
# detections per verdict of a database with no ancestor (2.6x). On 20 devices, 528 000 detections,
# 44 000 verdicts and 88 000 ledger rows, two clones among them (``bench/fleet_views.py``, best of
# 3, three runs): effort_daily 0.38-0.56 s against revision 3's 0.21-0.26 s (the sort of every
# ledger row by its owner), review_precision 0.63-0.77 s against 0.51-0.62 s.
def _recordings_by_analyser(span: str = "") -> str:
    """Each recording once, under the device that analysed it: (site, source, start_utc, duration_s,
    ``span``'s columns, timezone)."""
    return f"""(WITH RECURSIVE ancestry (db_uuid, ancestor, depth) AS (
                    SELECT db_uuid, forked_from, 1 FROM {SCHEMA}.databases WHERE forked_from IS NOT NULL
                    UNION ALL
                    SELECT a.db_uuid, p.forked_from, a.depth + 1
                    FROM ancestry a JOIN {SCHEMA}.databases p ON p.db_uuid = a.ancestor
                    WHERE p.forked_from IS NOT NULL AND a.depth < 64),
                analysed_by AS (
                    SELECT DISTINCT ON (a.db_uuid, af.source, af.size, af.mtime_ns) a.db_uuid, af.source, af.size,
                           af.mtime_ns, adb.device_id
                    FROM ancestry a JOIN {SCHEMA}.files af ON af.db_uuid = a.ancestor AND af.state = 'done'
                    JOIN {SCHEMA}.databases adb ON adb.db_uuid = a.ancestor
                    ORDER BY a.db_uuid, af.source, af.size, af.mtime_ns, a.depth DESC)
                SELECT DISTINCT ON (owner.site, f.source) owner.site, f.source, f.start_utc, f.duration_s,{span}
                       b.timezone
                FROM {SCHEMA}.files f JOIN {SCHEMA}.databases db USING (db_uuid)
                LEFT JOIN analysed_by ab ON ab.db_uuid = f.db_uuid AND ab.source = f.source
                    AND coalesce(ab.size, -1) = coalesce(f.size, -1)
                    AND coalesce(ab.mtime_ns, -1) = coalesce(f.mtime_ns, -1)   -- hashable, unlike IS NOT DISTINCT FROM
                CROSS JOIN LATERAL (SELECT coalesce(ab.device_id, db.device_id) AS site) owner
                JOIN {SCHEMA}.device_bundle b ON b.device_id = owner.site
                WHERE f.state = 'done' AND f.start_utc IS NOT NULL
                ORDER BY owner.site, f.source, f.updated_at DESC)"""


_RECORDINGS_BY_ANALYSER = _recordings_by_analyser()
_FILE_EFFORT_BY_ANALYSER = f"""    SELECT site, (start_utc AT TIME ZONE timezone)::date, 0, 0, count(*), sum(duration_s) / 3600,
           coalesce(extract(epoch FROM max(gap)) / 3600, 0)::float8
    FROM (SELECT r.*, r.start_utc - lag(r.start_utc + make_interval(secs => r.duration_s))
                     OVER (PARTITION BY r.site ORDER BY r.start_utc) AS gap
          FROM {_RECORDINGS_BY_ANALYSER} r) g
    GROUP BY 1, 2) u
GROUP BY site, day;
"""
_BY_THE_RECORDER_THAT_MADE_THEM = _effort_once_per_minute(_FILE_EFFORT_BY_ANALYSER) + review_precision_sql(
    "CREATE OR REPLACE VIEW", f"""
            WHERE EXISTS (SELECT 1 FROM {SCHEMA}.databases o JOIN {SCHEMA}.detections d ON d.db_uuid = o.db_uuid
                              AND d.source = r.source AND d.start_s = r.start_s AND d.label = r.label
                              AND d.bundle_id = r.bundle_id
                          WHERE o.device_id = j.site AND {_FROM_CURRENT_BY_SYNC})""", "j.site", f"""
            CROSS JOIN LATERAL (SELECT CASE WHEN db.forked_from IS NULL THEN db.device_id ELSE coalesce(
                (SELECT own.device_id FROM {SCHEMA}.detections own
                 WHERE own.db_uuid = r.db_uuid AND own.source = r.source AND own.start_s = r.start_s
                   AND own.label = r.label AND own.bundle_id = r.bundle_id), db.device_id) END AS site) j""")

# 5: a row counts under the device id it carries only where that id is its own recorder's: one
# its database, or an ancestor in its ``forked_from`` lineage, was registered under; any other row
# counts under the device of its lineage's first database, the recorder that made it (a review).
# - A recorder that stored its rows under one id (the default 'edgemon', recording offline) and
#   first synced under another sends them with the id they carry. No ``device_bundle`` row existed
#   for it, and the inner joins left every such detection and live minute out of every view (12
#   detections and 10 minutes on the server, none in the views).
# - Counting them under any registered id instead (this revision's first form) let the first unit
#   that syncs under the default id take over every other site's offline rows, and counted a
#   clone's copies of them under the clone too (a review of that form).
# - A clone, a rename or a restore keeps the rows of the ids of its ancestors under them (revision 4).
#   Where no row of a site carries its id, its newest bundle is the one its latest database reported.
# ``lineage`` lists, per database, the device ids of its lineage and the lineage's first device.
#
# And ``recorder_health`` trusts the recorder's clock less: the last heartbeat is the newest one
# not dated more than a day ahead of the server (one dated 2031 stood as the last for years, its
# state and disk over today's), and the free space is the one measured at the latest sync (the
# server's clock orders syncs), the heartbeat's only where a recorder of an earlier edgemon sent
# none. Neither ``last_detection`` nor ``clock_suspect_7d`` counts a detection dated ahead of it.
_LINEAGE = f"""
CREATE OR REPLACE VIEW {SCHEMA}.lineage AS
WITH RECURSIVE line (db_uuid, ancestor, device_id, depth) AS (
    SELECT db_uuid, forked_from, device_id, 0 FROM {SCHEMA}.databases
    UNION ALL
    SELECT l.db_uuid, p.forked_from, p.device_id, l.depth + 1
    FROM line l JOIN {SCHEMA}.databases p ON p.db_uuid = l.ancestor
    WHERE l.depth < 64)
SELECT DISTINCT ON (db_uuid, device_id) db_uuid, device_id, root
FROM (SELECT db_uuid, device_id, first_value(device_id) OVER (PARTITION BY db_uuid ORDER BY depth DESC) AS root
      FROM line) l
ORDER BY db_uuid, device_id;
"""
# Per database: the ids of its lineage and its lineage's first device, one row each, so that the
# views join it by ``db_uuid`` (hashable, and estimated as well as ``databases``).
_LINES = f"(SELECT db_uuid, array_agg(device_id) AS ids, min(root) AS root FROM {SCHEMA}.lineage GROUP BY db_uuid)"
# Two branches, the rows under their own database's id (nearly all) and the rest: 1.21-2.40x
# revision 4's time on 528 000 detections, where one join on a resolved id made the planner expect
# a tenth of the rows and sort them on disk (2.95x), and joins on the recursive ``lineage`` itself
# took 3.3x (``bench/fleet_views.py``).
_BY_OWN_RECORDER = ("d.site", f"""(SELECT d.*, d.device_id AS site, b.timezone AS tz, b.bundle_id AS newest
            FROM {SCHEMA}.detections d
            JOIN {SCHEMA}.databases db ON db.db_uuid = d.db_uuid AND db.device_id = d.device_id
            JOIN {SCHEMA}.device_bundle b ON b.device_id = d.device_id
            UNION ALL
            SELECT d.*, s.site, b.timezone, coalesce(b.bundle_id, (
                       SELECT x.bundle_id FROM {SCHEMA}.databases x WHERE x.device_id = s.site
                       ORDER BY x.last_sync DESC LIMIT 1))
            FROM {SCHEMA}.detections d
            JOIN {SCHEMA}.databases db ON db.db_uuid = d.db_uuid AND db.device_id <> d.device_id
            JOIN {_LINES} lin ON lin.db_uuid = d.db_uuid
            CROSS JOIN LATERAL (SELECT CASE WHEN d.device_id = ANY(lin.ids) THEN d.device_id ELSE lin.root END
                                AS site) s
            JOIN {SCHEMA}.device_bundle b ON b.device_id = s.site) d
      CROSS JOIN LATERAL (SELECT d.tz AS timezone, d.newest AS bundle_id) b""")
_COVERAGE_BY_OWN_RECORDER = ("device_id", f"""FROM (SELECT c.*
                FROM {SCHEMA}.coverage c
                JOIN {SCHEMA}.databases db ON db.db_uuid = c.db_uuid AND db.device_id = c.device_id
                UNION ALL
                SELECT c.db_uuid, c.source, c.minute_utc,
                       CASE WHEN c.device_id = ANY(lin.ids) THEN c.device_id ELSE lin.root END,
                       c.analysed_s, c.lost_overflow_s, c.lost_dropped_s, c.lost_device_s, c.lost_daemon_s,
                       c.overflows, c.dropped_blocks, c.end_utc, c.clock_synced, c.updated_at
                FROM {SCHEMA}.coverage c
                JOIN {SCHEMA}.databases db ON db.db_uuid = c.db_uuid AND db.device_id <> c.device_id
                JOIN {_LINES} lin ON lin.db_uuid = c.db_uuid) c
          GROUP BY device_id, source, minute_utc""")
_HEALTH = "\n" + recorder_health_sql("CREATE OR REPLACE VIEW", "db.disk_free_mb, hb.disk_free_mb",
                                  " AND d.created_at <= now() + interval '1 day'",
                                  "\n                     AND h.at_utc <= now() + interval '1 day'",
                                  " AND d.start_utc <= now() + interval '1 day'")
_OWN_DETECTION_SITE = f"""
            JOIN {_LINES} lin ON lin.db_uuid = r.db_uuid
            CROSS JOIN LATERAL (SELECT CASE WHEN db.forked_from IS NULL THEN db.device_id ELSE coalesce(
                (SELECT own.device_id FROM {SCHEMA}.detections own
                 WHERE own.db_uuid = r.db_uuid AND own.source = r.source AND own.start_s = r.start_s
                   AND own.label = r.label AND own.bundle_id = r.bundle_id AND own.device_id = ANY(lin.ids)),
                lin.root) END AS site) j"""
_ROWS_UNDER_THEIR_OWN_RECORDER = (
    _LINEAGE
    + detections_daily_sql("detections_daily_all", _FROM_CURRENT_BY_SYNC, "CREATE OR REPLACE VIEW", _BY_OWN_RECORDER)
    + detections_daily_sql("detections_daily", f"({NEWEST_BUNDLE}) AND {_FROM_CURRENT_BY_SYNC}",
                        "CREATE OR REPLACE VIEW", _BY_OWN_RECORDER)
    + _effort_once_per_minute(_FILE_EFFORT_BY_ANALYSER, _COVERAGE_BY_OWN_RECORDER)
    + review_precision_sql("CREATE OR REPLACE VIEW", f"""
            WHERE EXISTS (SELECT 1 FROM {SCHEMA}.databases o JOIN {SCHEMA}.detections d ON d.db_uuid = o.db_uuid
                              AND d.source = r.source AND d.start_s = r.start_s AND d.label = r.label
                              AND d.bundle_id = r.bundle_id
                          WHERE o.device_id = j.site AND {_FROM_CURRENT_BY_SYNC})""", "j.site", _OWN_DETECTION_SITE)
    + _HEALTH)

# 6: a recording's hours count on the local days they were recorded, not all on the day it started
# (an analyst's trial). A recording from 23:59:30 to 00:00:39 local counted its 69 s on the first
# day, and its detections after midnight fell on a day with no effort at all: a rate per hour of
# effort divided by zero there and was too low the day before (``export-detections --recordings``
# already cut a recording at the edge of a range). Each recording is cut at the local midnights it
# spans (found in UTC, so a day of 23 or 25 hours is cut where its clock says); it counts in
# ``files`` and ``longest_gap_h`` on the day it started, as before; a gap is never below 0 (recordings
# timed to overlap by a millisecond printed -0.00 h).
# A recording ``g`` (start_utc, duration_s, timezone) cut at the local midnights it spans: one row
# ``p`` per local day it touches (day, first: the day it began, part_s: its seconds that day).
def _local_day_parts(length: str = "duration_s", audio: str = "") -> str:
    """``p``: recording ``g`` cut at local midnights over its ``length``; ``audio`` scales a part's seconds."""
    return f"""          CROSS JOIN LATERAL (
              SELECT d::date AS day, d::date = (g.start_utc AT TIME ZONE g.timezone)::date AS first,
                     CASE WHEN g.duration_s IS NOT NULL THEN extract(epoch FROM
                         least(g.start_utc + make_interval(secs => g.{length}),
                               (d + interval '1 day') AT TIME ZONE g.timezone)
                         - greatest(g.start_utc, d AT TIME ZONE g.timezone)){audio} END AS part_s
              FROM generate_series((g.start_utc AT TIME ZONE g.timezone)::date::timestamp,
                                   ((g.start_utc + make_interval(secs => coalesce(g.{length}, 0)))
                                    AT TIME ZONE g.timezone)::date::timestamp, interval '1 day') d) p
"""


_LOCAL_DAY_PARTS = _local_day_parts()


def _file_effort_by_local_day(recordings: str, length: str = "duration_s", audio: str = "") -> str:
    """The files half of ``effort_daily`` over ``recordings`` (site, source, start_utc, duration_s,
    timezone), each recording's seconds on the local days they fall in (``_local_day_parts``)."""
    return f"""    SELECT site, day, 0, 0, count(*) FILTER (WHERE first), sum(part_s) / 3600,
           greatest(coalesce(extract(epoch FROM max(gap) FILTER (WHERE first)) / 3600, 0), 0)::float8
    FROM (SELECT g.site, p.day, p.first, p.part_s, g.gap
          FROM (SELECT r.*, r.start_utc - lag(r.start_utc + make_interval(secs => r.{length}))
                           OVER (PARTITION BY r.site ORDER BY r.start_utc) AS gap
                FROM {recordings} r) g
{_local_day_parts(length, audio)}          WHERE p.first OR p.part_s > 0) x
    GROUP BY 1, 2) u
GROUP BY site, day;
"""


_EFFORT_ON_THE_DAYS_RECORDED = _effort_once_per_minute(_file_effort_by_local_day(_RECORDINGS_BY_ANALYSER),
                                                       _COVERAGE_BY_OWN_RECORDER)

# 7: the hour of the local day, for calls per species, site, day and hour and their rate per hour
# of effort (an analyst's trial). The daily views were all there was: an hour needed the detections
# table itself, where a recorder's restored or cloned databases hold copies, stale copies of a
# recording analysed again count nowhere, rows may carry another device's id, and the site's zone
# is on its newest database; none of it said how. Two new views:
# - ``detections_counted``: each detection the daily views count, once (one row per site and
#   natural key), with its local time, day and hour; ``current``: of the site's current bundle
#   (what ``detections_daily`` counts; ``detections_daily_all`` counts every row).
# - ``effort_hourly``: ``effort_daily``'s hours per local hour. A recording is cut into quarter
#   hours of UTC (every zone's offset is a multiple of 15 minutes), each counted in the local hour
#   it falls in, so the hour repeated when summer time ends holds both of its quarters.
def _effort_hourly(recordings: str, length: str = "duration_s", audio: str = "") -> str:
    """``effort_hourly`` over ``recordings``: each cut over its ``length`` into quarter hours of UTC,
    ``audio`` scaling a quarter's seconds."""
    return f"""
CREATE OR REPLACE VIEW {SCHEMA}.effort_hourly AS
SELECT site, day, hour, sum(listen_h) AS listen_h, sum(lost_h) AS lost_h, sum(recorded_h) AS recorded_h,
       sum(listen_h) + sum(recorded_h) AS effort_h
FROM (
    SELECT c.device_id AS site, (c.minute_utc AT TIME ZONE b.timezone)::date AS day,
           extract(hour FROM c.minute_utc AT TIME ZONE b.timezone)::int AS hour,
           sum(c.analysed_s) / 3600 AS listen_h, sum(c.lost_s) / 3600 AS lost_h, 0.0::float8 AS recorded_h
    FROM (SELECT {_COVERAGE_BY_OWN_RECORDER[0]}, minute_utc, max(analysed_s) AS analysed_s,
                 greatest(0.0, least(max(lost_overflow_s + lost_dropped_s + lost_device_s + lost_daemon_s),
                                     60 - max(analysed_s))) AS lost_s
          {_COVERAGE_BY_OWN_RECORDER[1]}) c
    JOIN {SCHEMA}.device_bundle b USING (device_id)
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT r.site, (q AT TIME ZONE r.timezone)::date, extract(hour FROM q AT TIME ZONE r.timezone)::int, 0, 0,
           sum(extract(epoch FROM least(r.start_utc + make_interval(secs => r.{length}), q + interval '15 minutes')
                                  - greatest(r.start_utc, q)){audio}) / 3600
    FROM {recordings} r
    CROSS JOIN LATERAL generate_series(date_trunc('hour', r.start_utc),
                                       r.start_utc + make_interval(secs => r.{length}), interval '15 minutes') q
    WHERE r.duration_s > 0 AND q < r.start_utc + make_interval(secs => r.{length})
      AND q + interval '15 minutes' > r.start_utc
    GROUP BY 1, 2, 3) u
GROUP BY site, day, hour;
"""


_COUNTED = f"""
CREATE OR REPLACE VIEW {SCHEMA}.detections_counted AS
SELECT DISTINCT ON (k.site, k.source, k.start_s, k.species, k.bundle_id)
       k.site, k.species, k.bundle_id, k.current, k.start_utc, k.start_local, k.start_local::date AS day,
       extract(hour FROM k.start_local)::int AS hour, k.clock_suspect, k.confidence, k.source, k.start_s,
       k.end_s, k.db_uuid
FROM (SELECT {_BY_OWN_RECORDER[0]} AS site, d.label AS species, d.bundle_id, ({NEWEST_BUNDLE}) AS current,
             d.start_utc, d.start_utc AT TIME ZONE b.timezone AS start_local, d.clock_suspect, d.confidence,
             d.source, d.start_s, d.end_s, d.db_uuid
      FROM {_BY_OWN_RECORDER[1]}
      WHERE {_FROM_CURRENT_BY_SYNC}) k
ORDER BY k.site, k.source, k.start_s, k.species, k.bundle_id, k.clock_suspect DESC, k.db_uuid;
""" + _effort_hourly(_RECORDINGS_BY_ANALYSER)


# A recorder database's analyses for ``effort_daily_by_bundle`` (an upgrade trial): a fleet is
# upgraded one recorder at a time, and a recorder of the release before syncs on beside upgraded
# ones but never sends its analyses (nor does one whose role may not write the table); counted by
# its analyses alone it had no hours at all, and the README's rate per bundle hour dropped every
# one of its detections (a mixed fleet: the old unit's 20 detections on 5 days). A database that
# sent no analyses counts, as recorder migration m014 fills them, the ledger row's bundle
# (``watch``'s) and each other bundle with detections of the recording; one that sent any counts
# them alone. Its ``reanalyse``d recordings with no detection of the new bundle are still missed,
# until it upgrades and sends them.
_ANALYSED_OR_AS_M014 = f"""(SELECT a.db_uuid, a.source, a.bundle_id FROM {SCHEMA}.analyses a
                  UNION
                  SELECT f.db_uuid, f.source, f.bundle_id FROM {SCHEMA}.files f
                  WHERE f.state = 'done' AND f.bundle_id IS NOT NULL
                    AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.analyses s WHERE s.db_uuid = f.db_uuid)
                  UNION
                  SELECT d.db_uuid, d.source, d.bundle_id FROM {SCHEMA}.detections d
                  WHERE NOT EXISTS (SELECT 1 FROM {SCHEMA}.analyses s WHERE s.db_uuid = d.db_uuid))"""

# 8: each bundle's own hours (an analyst's trial). The fleet knew only the ledger, whose bundle is
# ``watch``'s: a site whose recordings still on its card were ``reanalyse``d with a new bundle, then
# switched to it, showed hours of effort and no calls on the days that bundle never analysed (the
# recordings already deleted from the card). The recorder's ``analyses`` (which bundle analysed
# which recording; recorder migration m017) now travel, into a table this revision adds rather than
# a schema version, so recorders of the release before keep syncing (they refuse a newer schema).
# ``effort_daily_by_bundle``: the hours of the recordings each bundle analysed, per site and local
# day, cut at local midnights as ``effort_daily`` is; divide a bundle's calls by its own hours.
def _effort_daily_by_bundle(recordings: str, length: str = "duration_s", audio: str = "") -> str:
    """``effort_daily_by_bundle`` over ``recordings``, cut as ``_local_day_parts`` cuts them."""
    return f"""CREATE OR REPLACE VIEW {SCHEMA}.effort_daily_by_bundle AS
SELECT site, bundle_id, day, count(*) FILTER (WHERE first)::bigint AS files, sum(part_s) / 3600 AS recorded_h
FROM (SELECT g.site, g.bundle_id, p.day, p.first, p.part_s
      FROM (SELECT r.*, a.bundle_id
            FROM {recordings} r
            JOIN (SELECT DISTINCT db.device_id AS site, a.source, a.bundle_id
                  FROM {_ANALYSED_OR_AS_M014} a JOIN {SCHEMA}.databases db USING (db_uuid)) a USING (site, source)) g
{_local_day_parts(length, audio)}      WHERE p.first OR p.part_s > 0) x
GROUP BY site, bundle_id, day;
"""


_ANALYSES = f"""
CREATE TABLE IF NOT EXISTS {SCHEMA}.analyses (
    db_uuid uuid NOT NULL, source text NOT NULL, bundle_id text NOT NULL,
    duration_s double precision, analysed_at timestamptz, ledger_at timestamptz,
    PRIMARY KEY (db_uuid, source, bundle_id)
);
""" + _effort_daily_by_bundle(_RECORDINGS_BY_ANALYSER)

# 9: each bundle's own hours per local hour (a season trial). ``effort_hourly`` counts every
# recording, whichever bundle analysed it; after a partial ``reanalyse`` the current bundle's calls
# per hour of the day were divided by hours it never heard (Kuching, 06 h over the season: its 3
# calls in 210 s of its own audio, the review page's chart of that bundle, against 450 s in
# ``effort_hourly``), while ``effort_daily_by_bundle`` already gave its hours per day.
# ``effort_hourly_by_bundle``: ``effort_daily_by_bundle``'s recordings cut as ``effort_hourly`` cuts them.
def _effort_hourly_by_bundle(recordings: str, length: str = "duration_s", audio: str = "") -> str:
    """``effort_hourly_by_bundle`` over ``recordings``, cut as ``_effort_hourly`` cuts them."""
    return f"""
CREATE OR REPLACE VIEW {SCHEMA}.effort_hourly_by_bundle AS
SELECT r.site, a.bundle_id, (q AT TIME ZONE r.timezone)::date AS day,
       extract(hour FROM q AT TIME ZONE r.timezone)::int AS hour,
       sum(extract(epoch FROM least(r.start_utc + make_interval(secs => r.{length}), q + interval '15 minutes')
                              - greatest(r.start_utc, q)){audio}) / 3600 AS recorded_h
FROM {recordings} r
JOIN (SELECT DISTINCT db.device_id AS site, a.source, a.bundle_id
      FROM {_ANALYSED_OR_AS_M014} a JOIN {SCHEMA}.databases db USING (db_uuid)) a USING (site, source)
CROSS JOIN LATERAL generate_series(date_trunc('hour', r.start_utc),
                                   r.start_utc + make_interval(secs => r.{length}), interval '15 minutes') q
WHERE r.duration_s > 0 AND q < r.start_utc + make_interval(secs => r.{length})
  AND q + interval '15 minutes' > r.start_utc
GROUP BY 1, 2, 3, 4;
"""


_HOURLY_BY_BUNDLE = _effort_hourly_by_bundle(_RECORDINGS_BY_ANALYSER)


# 10: a triggered recording's audio laid over the time it spans (a season trial). A triggered
# AudioMoth recording leaves its silent stretches out, so its audio is shorter than the time it
# spans (recorder migration m016's ``files.span_s``). The fleet had its audio only and laid it from
# its start: one across local midnight gave all its audio to the first day, and its detections after
# midnight fell on a day without effort (120 s on the first day, against 55 s and 65 s in
# ``export-detections --recordings`` by day). ``files.span_s`` now travels (a column this revision
# adds, not a schema version: a recorder of an earlier edgemon syncs on and sends none), and the four
# effort views lay each recording's audio in proportion over the time it spans, as the recorder's
# export does; gaps between recordings count from the end of that span. Without a span (recordings
# that are not triggered, rows from an earlier edgemon) nothing changes.
_SPAN = " greatest(f.duration_s, coalesce(f.span_s, f.duration_s)) AS span_s,"
_RECORDINGS_SPANNED = _recordings_by_analyser(_SPAN)
_AUDIO_SHARE = " * coalesce({0}.duration_s / nullif({0}.span_s, 0), 1)::numeric"   # numeric, as the views were
_AUDIO_OVER_ITS_SPAN = (
    f"\nALTER TABLE {SCHEMA}.files ADD COLUMN IF NOT EXISTS span_s double precision;\n"
    + _effort_once_per_minute(_file_effort_by_local_day(_RECORDINGS_SPANNED, "span_s", _AUDIO_SHARE.format("g")),
                              _COVERAGE_BY_OWN_RECORDER)
    + _effort_hourly(_RECORDINGS_SPANNED, "span_s", _AUDIO_SHARE.format("r"))
    + _effort_daily_by_bundle(_RECORDINGS_SPANNED, "span_s", _AUDIO_SHARE.format("g"))
    + _effort_hourly_by_bundle(_RECORDINGS_SPANNED, "span_s", _AUDIO_SHARE.format("r")))


VIEW_REVISIONS: tuple[str, ...] = (_EFFORT_ONCE_PER_MINUTE, _DETECTIONS_FROM_ONE_DATABASE, _BY_THE_SERVERS_CLOCK,
                                   _BY_THE_RECORDER_THAT_MADE_THEM, _ROWS_UNDER_THEIR_OWN_RECORDER,
                                   _EFFORT_ON_THE_DAYS_RECORDED, _COUNTED, _ANALYSES, _HOURLY_BY_BUNDLE,
                                   _AUDIO_OVER_ITS_SPAN)
