"""The fleet database's schema (PostgreSQL), as versioned DDL: tables, indexes and the views for
the person running the study. ``edgemon.sync.fleetdb`` applies it; nothing here talks to a server.

Every table is keyed by the recorder's natural key plus the per-database UUID (``db_uuid``).
Version n is ``MIGRATIONS[n - 1]``; a migration is never edited once released, only appended.
"""

from __future__ import annotations

SCHEMA = "edgemon"

# The files half of ``effort_daily`` (each analysed recording once per device), shared by its
# first release and its revisions.
FILE_EFFORT = f"""    SELECT site, (start_utc AT TIME ZONE timezone)::date, 0, 0, count(*), sum(duration_s) / 3600,
           coalesce(extract(epoch FROM max(gap)) / 3600, 0)::float8
    FROM (SELECT r.*, r.start_utc - lag(r.start_utc + make_interval(secs => r.duration_s))
                     OVER (PARTITION BY r.site ORDER BY r.start_utc) AS gap
          FROM (SELECT DISTINCT ON (db.device_id, f.source) db.device_id AS site, f.source, f.start_utc,
                       f.duration_s, b.timezone
                FROM {SCHEMA}.files f JOIN {SCHEMA}.databases db USING (db_uuid)
                JOIN {SCHEMA}.device_bundle b ON b.device_id = db.device_id
                WHERE f.state = 'done' AND f.start_utc IS NOT NULL
                ORDER BY db.device_id, f.source, f.updated_at DESC) r) g
    GROUP BY 1, 2) u
GROUP BY site, day;
"""

_TABLES = f"""
CREATE TABLE {SCHEMA}.databases (
    db_uuid uuid PRIMARY KEY,
    device_id text NOT NULL,
    first_sync timestamptz NOT NULL DEFAULT now(),
    last_sync timestamptz NOT NULL DEFAULT now(),
    acked_seq bigint NOT NULL DEFAULT 0,
    local_seq bigint NOT NULL DEFAULT 0,
    latitude double precision,
    longitude double precision,
    timezone text,
    bundle_id text,
    bundle_manifest text,
    edgemon_version text,
    settings_hash text,
    sync_interval_s double precision,
    heartbeat_s double precision,
    disk_free_mb double precision,
    clock_offset_s double precision
);
CREATE INDEX databases_device ON {SCHEMA}.databases (device_id);
CREATE TABLE {SCHEMA}.sync_sessions (
    db_uuid uuid NOT NULL REFERENCES {SCHEMA}.databases,
    started timestamptz NOT NULL DEFAULT now(),
    backlog bigint NOT NULL
);
CREATE INDEX sync_sessions_db ON {SCHEMA}.sync_sessions (db_uuid, started);
CREATE TABLE {SCHEMA}.detections (
    db_uuid uuid NOT NULL, source text NOT NULL, start_s double precision NOT NULL,
    label text NOT NULL, bundle_id text NOT NULL,
    device_id text NOT NULL, end_s double precision NOT NULL, start_utc timestamptz,
    end_utc timestamptz, time_source text NOT NULL, clock_suspect boolean NOT NULL,
    clock_synced boolean, confidence real NOT NULL, votes text, clip_path text,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (db_uuid, source, start_s, label, bundle_id)
);
CREATE INDEX detections_start ON {SCHEMA}.detections (start_utc);
CREATE INDEX detections_device_created ON {SCHEMA}.detections (device_id, created_at);
CREATE TABLE {SCHEMA}.files (
    db_uuid uuid NOT NULL, source text NOT NULL,
    path text, size bigint, mtime_ns bigint, state text NOT NULL, attempts integer,
    error text, duration_s double precision, start_utc timestamptz, time_source text,
    clock_suspect boolean, bundle_id text, updated_at timestamptz,
    PRIMARY KEY (db_uuid, source)
);
CREATE TABLE {SCHEMA}.coverage (
    db_uuid uuid NOT NULL, source text NOT NULL, minute_utc timestamptz NOT NULL,
    device_id text NOT NULL, analysed_s double precision, lost_overflow_s double precision,
    lost_dropped_s double precision, lost_device_s double precision, lost_daemon_s double precision,
    overflows integer, dropped_blocks integer, end_utc timestamptz, clock_synced boolean,
    updated_at timestamptz,
    PRIMARY KEY (db_uuid, source, minute_utc)
);
CREATE TABLE {SCHEMA}.heartbeats (
    db_uuid uuid NOT NULL, run_id text NOT NULL, uptime_s double precision NOT NULL,
    mode text, device_id text NOT NULL, at_utc timestamptz NOT NULL, started_utc timestamptz,
    state text, bundle_id text, files_done integer, audio_s double precision,
    busy_s double precision, disk_free_mb double precision, rss_mb double precision, note text,
    PRIMARY KEY (db_uuid, run_id, uptime_s)
);
CREATE INDEX heartbeats_at ON {SCHEMA}.heartbeats (db_uuid, at_utc);
"""

# Views for the person running the study. A device's rows may come from several databases (a
# corrupt one rebuilt re-analyses everything), so counts are of distinct natural keys per
# device; the newest bundle of a device is the bundle of its most recently stored detection.
# Days are local days in the device's time zone. A filter on ``day`` reaches inside the
# aggregates (day is a grouping column), so `fleet status` asks only for the days it shows.
NEWEST_BUNDLE = "b.bundle_id IS NULL OR d.bundle_id = b.bundle_id"   # detections_daily: the device's newest bundle


_BY_ROW_ID = ("d.device_id", f"{SCHEMA}.detections d JOIN {SCHEMA}.device_bundle b USING (device_id)")


def detections_daily_sql(name: str, where: str, create: str = "CREATE VIEW",
                      site_from: tuple[str, str] = _BY_ROW_ID) -> str:
    # Two levels (distinct keys, then counts) instead of count(DISTINCT ...): hashable, and
    # a third of the time on 450 000 detections.
    site, source = site_from
    return f"""
{create} {SCHEMA}.{name} AS
SELECT k.site, k.species, k.day, count(*) AS detections, count(*) FILTER (WHERE k.suspect) AS clock_suspect,
       k.bundle_id
FROM (SELECT {site} AS site, d.label AS species, d.bundle_id,
             (d.start_utc AT TIME ZONE b.timezone)::date AS day, d.source, d.start_s,
             bool_or(d.clock_suspect) AS suspect
      FROM {source}
      WHERE {where}
      GROUP BY 1, 2, 3, 4, 5, 6) k
GROUP BY k.site, k.species, k.day, k.bundle_id;
"""


def recorder_health_sql(create: str, disk: str = "hb.disk_free_mb, db.disk_free_mb", not_ahead: str = "",
                     heartbeat_not_ahead: str = "", detection_not_ahead: str = "") -> str:
    """The view; ``disk`` is the order free space is taken in, the others what leaves out rows
    dated ahead of the server (revision 5)."""
    return f"""{create} {SCHEMA}.recorder_health AS
SELECT db.device_id AS site, db.db_uuid, db.last_sync, db.local_seq - db.acked_seq AS backlog,
       hb.at_utc AS last_heartbeat, hb.state AS last_state,
       coalesce({disk}) AS disk_free_mb,
       (SELECT max(start_utc) FROM {SCHEMA}.detections d WHERE d.db_uuid = db.db_uuid{detection_not_ahead}) AS last_detection,
       db.clock_offset_s,
       (SELECT count(*) FROM {SCHEMA}.detections d WHERE d.db_uuid = db.db_uuid AND d.clock_suspect
          AND d.created_at > now() - interval '7 days'{not_ahead}) AS clock_suspect_7d,
       db.sync_interval_s, db.bundle_id, db.edgemon_version, db.latitude, db.longitude, db.timezone,
       ARRAY(SELECT s.backlog FROM {SCHEMA}.sync_sessions s WHERE s.db_uuid = db.db_uuid
             ORDER BY s.started DESC LIMIT 3) AS recent_backlogs,
       (SELECT min(h.at_utc) FROM {SCHEMA}.heartbeats h WHERE h.db_uuid = db.db_uuid) AS first_heartbeat
FROM {SCHEMA}.databases db
LEFT JOIN LATERAL (SELECT * FROM {SCHEMA}.heartbeats h WHERE h.db_uuid = db.db_uuid{heartbeat_not_ahead}
                   ORDER BY h.at_utc DESC LIMIT 1) hb ON true;
"""


_VIEWS = f"""
CREATE INDEX coverage_minute ON {SCHEMA}.coverage (minute_utc);
CREATE INDEX files_start ON {SCHEMA}.files (start_utc);

CREATE VIEW {SCHEMA}.device_bundle AS
SELECT DISTINCT ON (db.device_id) db.device_id, newest.bundle_id, coalesce(db.timezone, 'UTC') AS timezone,
       db.latitude, db.longitude
FROM {SCHEMA}.databases db
LEFT JOIN LATERAL (SELECT d.bundle_id FROM {SCHEMA}.detections d WHERE d.device_id = db.device_id
                   ORDER BY d.created_at DESC LIMIT 1) newest ON true
ORDER BY db.device_id, db.last_sync DESC;
{detections_daily_sql("detections_daily_all", "true")}
{detections_daily_sql("detections_daily", NEWEST_BUNDLE)}
-- Effort: live streams' coverage (seconds analysed and lost per minute) and watched directories'
-- recordings (the files ledger: each analysed file's duration, and the gap since the previous
-- recording's end), summed per site and local day. UNION ALL, not a FULL JOIN, so that a filter
-- on day reaches both halves. Files are counted once per device (a rebuilt database re-analyses
-- them); coverage minutes are not (a rebuilt database never rewrites past minutes).
CREATE VIEW {SCHEMA}.effort_daily AS
SELECT site, day, sum(listen_h) AS listen_h, sum(lost_h) AS lost_h, sum(files)::bigint AS files,
       sum(recorded_h) AS recorded_h, max(longest_gap_h) AS longest_gap_h,
       sum(listen_h) + sum(recorded_h) AS effort_h
FROM (
    SELECT c.device_id AS site, (c.minute_utc AT TIME ZONE b.timezone)::date AS day,
           sum(c.analysed_s) / 3600 AS listen_h,
           sum(c.lost_overflow_s + c.lost_dropped_s + c.lost_device_s + c.lost_daemon_s) / 3600 AS lost_h,
           0 AS files, 0.0::float8 AS recorded_h, 0.0::float8 AS longest_gap_h
    FROM {SCHEMA}.coverage c JOIN {SCHEMA}.device_bundle b USING (device_id)
    GROUP BY 1, 2
    UNION ALL
{FILE_EFFORT}
{recorder_health_sql("CREATE VIEW")}"""

# Reviews (a person's verdicts, keyed like the recorder's: a detection's natural key plus the
# reviewer) and each recorder's latest status snapshot (what `edgemon status --json` reports).
# Precision per site, bundle and class counts each detection once, by its latest verdict whoever
# gave it ('unsure' left out), as `edgemon review` does; low/high is the 95 % Wilson interval.
_Z = 1.959964


def review_precision_sql(create: str, where: str, site: str = "db.device_id", site_join: str = "") -> str:
    """The view; ``site`` is the device a verdict counts under (``site_join`` adds what it reads)."""
    return f"""{create} {SCHEMA}.review_precision AS
SELECT site, bundle_id, label, judged, correct, correct::float8 / judged AS precision,
       greatest(0.0, (p + {_Z ** 2} / (2 * judged) - {_Z} * sqrt(p * (1 - p) / judged + {_Z ** 2} / (4.0 * judged * judged)))
                     / (1 + {_Z ** 2} / judged)) AS low,
       least(1.0, (p + {_Z ** 2} / (2 * judged) + {_Z} * sqrt(p * (1 - p) / judged + {_Z ** 2} / (4.0 * judged * judged)))
                  / (1 + {_Z ** 2} / judged)) AS high
FROM (SELECT site, bundle_id, label, count(*) AS judged, count(*) FILTER (WHERE verdict = 'correct') AS correct,
             count(*) FILTER (WHERE verdict = 'correct')::float8 / count(*) AS p
      FROM (SELECT DISTINCT ON ({site}, r.source, r.start_s, r.label, r.bundle_id)
                   {site} AS site, r.bundle_id, r.label, r.verdict
            FROM {SCHEMA}.reviews r JOIN {SCHEMA}.databases db USING (db_uuid){site_join}{where}
            ORDER BY {site}, r.source, r.start_s, r.label, r.bundle_id, r.reviewed_at DESC, r.reviewer) latest
      WHERE verdict <> 'unsure'
      GROUP BY 1, 2, 3) counts;
"""


_REVIEWS_AND_STATUS = f"""
CREATE TABLE {SCHEMA}.reviews (
    db_uuid uuid NOT NULL, source text NOT NULL, start_s double precision NOT NULL, label text NOT NULL,
    bundle_id text NOT NULL, reviewer text NOT NULL,
    verdict text NOT NULL, new_label text, reviewed_at timestamptz NOT NULL,
    PRIMARY KEY (db_uuid, source, start_s, label, bundle_id, reviewer)
);
CREATE TABLE {SCHEMA}.status_snapshots (
    db_uuid uuid PRIMARY KEY REFERENCES {SCHEMA}.databases,
    device_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    taken_utc timestamptz,
    problems text[] NOT NULL DEFAULT '{{}}',
    status jsonb NOT NULL
);
{review_precision_sql("CREATE VIEW", "")}"""

# Version 4. ``acked_token``: the token of the batch whose commit moved ``acked_seq``, so a
# recorder can check that the server's acknowledgement belongs to its own history (a database
# restored from a backup or a cloned card re-uses sequence numbers; see ``edgemon.sync``);
# ``forked_from``: the UUID a database synced as before it started a new lineage. A detection's
# raw vote ``score`` (recorder migration m006; NULL for rows from before it).
_LINEAGE_AND_SCORE = f"""
ALTER TABLE {SCHEMA}.databases ADD COLUMN acked_token text, ADD COLUMN forked_from uuid;
ALTER TABLE {SCHEMA}.detections ADD COLUMN score real;
"""

MIGRATIONS: tuple[str, ...] = (_TABLES, _VIEWS, _REVIEWS_AND_STATUS, _LINEAGE_AND_SCORE)
SCHEMA_VERSION = len(MIGRATIONS)
