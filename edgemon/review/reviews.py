"""Verdicts on detections: storing them, each class's precision so far, the review order, what
the page's filters offer, and the verdicts as CSV (``edgemon review --export``).

Readers open the database read-only per call; a verdict is written in a short ``BEGIN IMMEDIATE``
transaction of its own, so the page never holds a lock the recorder's writer waits on. Each call
opens its own connection because the web server answers requests on several threads.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import json
import math
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import TextIO

from edgemon.errors import EdgemonError
from edgemon.review.local_time import day_bounds, local, quarter_hour
from edgemon.storage import tables
from edgemon.storage.readonly import (BUSY_TIMEOUT_MS, LATEST_VERDICTS, SAME_SOUND_SHARE, edgemon_tables,
                                      error_code, has_table, latest_verdicts, ledger_columns, open_read_only)
from edgemon.storage.schema import REVIEW_VERDICTS
from edgemon.storage.store import Store
from edgemon.utc import parse_utc, utc_iso

ORDERS = ("teach", "time", "confidence")
Z_95 = 1.959964


class ReviewError(EdgemonError):
    """A verdict cannot be stored, or the detections cannot be read for review."""


class StaleDetection(ReviewError):
    """The detection asked for is no longer the one the page showed (re-analysed, restored, or
    another database served at the same address)."""


class UnknownDetection(ReviewError):
    """No detection has the id asked for."""


class DatabaseBusy(ReviewError):
    """Another process held the database's write lock past the busy timeout: the verdict was not
    stored, and giving it again may store it."""


def detection_key(row: dict) -> str:
    """A short digest of what a detection is and what the page plays of it: its natural key, its
    end and its saved clip. Ids alone are reused by another database and after a restore, so the
    page sends this key with its media requests and its verdicts."""
    what = [row["source"], row["start_s"], row["end_s"], row["label"], row["bundle_id"], row.get("clip_path")]
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ClassPrecision:
    """Reviewed detections of one label: ``correct`` of ``judged`` (correct + wrong + relabelled;
    'unsure' is left out); ``low``/``high`` is the 95 % Wilson interval of the precision."""

    label: str
    judged: int
    correct: int
    low: float
    high: float

    @property
    def precision(self) -> float | None:
        return self.correct / self.judged if self.judged else None

    @property
    def false_alarm_rate(self) -> float:
        """Wrong share with a uniform prior (``(wrong + 1) / (judged + 2)``): 0.5 for a class
        nobody has judged yet, so unreviewed classes are not ranked last."""
        return (self.judged - self.correct + 1) / (self.judged + 2)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when ``n`` is 0. Stays inside [0, 1] and is
    sensible for the small counts of a first review session, unlike the normal approximation."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


NOT_CHANGED = "; nothing was changed"


def open_for_review(db_path: Path) -> None:
    """Check the file is an edgemon database and bring it to the current schema (adds ``reviews``).
    A missing, unreadable or foreign file (another tool's SQLite file, an empty file) is a
    ``ReviewError``: the page must not add its tables to those."""
    with closing(open_read_only(db_path, ReviewError)) as conn:
        edgemon_tables(conn, db_path, ReviewError, NOT_CHANGED)
    Store(db_path).close()


def uncertainty(confidence: float, votes: str | None) -> float:
    """How unsure the ensemble was of a detection, 0..1: one minus its confidence times the share
    of members that voted for its label (members that disagree teach most when reviewed)."""
    agreement = 1.0
    try:
        parsed = json.loads(votes or "{}")
        member_votes, windows = parsed.get("member_votes"), parsed.get("windows")
        if member_votes and windows:
            agreement = sum(member_votes) / (len(member_votes) * windows)
    except (ValueError, TypeError, AttributeError):
        pass
    return 1.0 - confidence * agreement


def lead_windows(votes: str | None) -> int:
    """Window hops by which a detection's call began in the recording before its own (its votes'
    ``"lead"``: stored from its recording's start, ``analysis.lead_in``); 0 when none or unsaid."""
    try:
        lead = json.loads(votes or "{}").get("lead", 0)
    except (ValueError, TypeError, AttributeError):
        return 0
    return lead if isinstance(lead, int) and lead > 0 else 0


def precision_by_class(db_path: Path, bundle_id: str | None = None, as_of: str | None = None) -> list[ClassPrecision]:
    """Each detected label's precision from the reviews so far (latest verdict per detection), of
    one bundle's detections when ``bundle_id`` is given: bundles differ in how often they are right.
    ``as_of``: from the verdicts given until then (``reviews_as_of``)."""
    detected, judged, args = (("WHERE bundle_id = ?", "AND v.bundle_id = ?", [bundle_id]) if bundle_id
                              else ("", "", []))
    snapshot, since = reviews_as_of(as_of)
    with closing(open_read_only(db_path, ReviewError)) as conn:
        labels = [r[0] for r in conn.execute(f"SELECT DISTINCT label FROM detections {detected} ORDER BY label", args)]
        # Only verdicts on detections still stored: reanalyse removes the ones no longer found,
        # and their reviews stay behind (they counted here, and not on the page's list).
        counts = {r["label"]: r for r in conn.execute(f"""
            {snapshot} SELECT v.label, sum(v.verdict = 'correct') AS correct, count(*) AS judged
            FROM ({LATEST_VERDICTS}) v
            JOIN detections d ON d.source = v.source AND d.start_s = v.start_s AND d.label = v.label
                 AND d.bundle_id = v.bundle_id
            WHERE v.verdict != 'unsure' {judged} GROUP BY v.label""",
            since + args)}
    result = []
    for label in labels:
        row = counts.get(label)
        judged, correct = (row["judged"], row["correct"]) if row else (0, 0)
        result.append(ClassPrecision(label, judged, correct, *wilson_interval(correct, judged)))
    return result


# "time" by start_utc itself, so that SQLite reads the detections in time order from its index and
# stops after the page: sorted by coalesce(start_utc, '') (the same order, a time never being empty),
# a year at a busy site (a million detections) was sorted whole for each page, 1.3 s here (a scale
# trial). A detection without a time (NULL) still comes first.
_ORDER_BY = {"teach": "v.verdict IS NOT NULL, d.id IN judged_elsewhere, priority DESC, d.id",
             "time": "d.start_utc, d.source, d.start_s",
             "confidence": "d.confidence, d.id"}


# The latest verdict on an overlapping detection of the same recording under another bundle, unless
# it is 'unsure' (a verdict superseded by another reviewer's counted: a review); through the
# reviews' own key, which starts with the recording, so each row reads only that recording's reviews.
# ``o`` is the reviewed detection ``r`` judged; ``{d}`` names the detection it overlaps, which
# ``{join}`` may bring in.
_REVIEWED_OVERLAP = f"""FROM reviews r JOIN detections o ON o.source = r.source AND o.start_s = r.start_s
                   AND o.label = r.label AND o.bundle_id = r.bundle_id {{join}}
              WHERE r.source = {{d}}source AND r.bundle_id != {{d}}bundle_id AND r.verdict != 'unsure'
                    AND NOT EXISTS (SELECT 1 FROM reviews l WHERE l.source = r.source AND l.start_s = r.start_s
                                    AND l.label = r.label AND l.bundle_id = r.bundle_id
                                    AND (l.reviewed_at, l.id) > (r.reviewed_at, r.id))   -- the latest (LATEST_VERDICTS)
                    AND r.start_s < {{d}}end_s AND o.end_s > {{d}}start_s
                    AND min(o.end_s, {{d}}end_s) - max(r.start_s, {{d}}start_s) > 0
                    AND min(o.end_s, {{d}}end_s) - max(r.start_s, {{d}}start_s)
                        >= {SAME_SOUND_SHARE} * min(o.end_s - r.start_s, {{d}}end_s - {{d}}start_s)"""   # same_sound
_EARLIER = f"""SELECT r.label || ' judged ' || CASE r.verdict WHEN 'relabel' THEN 'as ' || r.new_label
                                                         ELSE r.verdict END || ' under ' || r.bundle_id
              {_REVIEWED_OVERLAP.format(join="", d=":")}
              ORDER BY r.reviewed_at DESC LIMIT 1"""
# The detections with such a verdict, found from the reviews (few) rather than asked of every
# detection (the teach order sorts them all: twice as slow on 300k detections, a review found).
_JUDGED_ELSEWHERE = f"""judged_elsewhere(id) AS (
    SELECT d.id {_REVIEWED_OVERLAP.format(join="JOIN detections d ON d.source = r.source", d="d.")})"""


def reviews_as_of(as_of: str | None) -> tuple[str, list]:
    """A ``WITH`` clause that makes ``reviews`` in the statement after it the verdicts given until
    ``as_of`` (UTC, as ``reviewed_at`` is stored), and its parameters; nothing when None."""
    if as_of is None:
        return "", []
    return "WITH reviews AS (SELECT * FROM main.reviews WHERE reviewed_at <= ?)", [as_of]


def list_detections(db_path: Path, *, order: str = "teach", label: str | None = None,
                    day: str | None = None, unreviewed_only: bool = False, bundle_id: str | None = None,
                    limit: int = 50, offset: int = 0, as_of: str | None = None, upto: int | None = None,
                    zone: dt.tzinfo | None = None) -> list[dict]:
    """One page of detections, as dicts with the latest verdict (``verdict``, ``new_label``), a
    ``priority`` (0..1: how much reviewing it would teach) and ``earlier``: the latest verdict on
    this sound under another bundle (a reviewed detection of the same recording overlapping it,
    e.g. before ``reanalyse``), as text, or None.

    ``order`` 'teach': the most uncertain detections of the classes with the most false alarms so
    far first, unreviewed before reviewed, and sounds judged under another bundle after the rest
    (they teach least); 'time': by start time; 'confidence': lowest first.
    ``day`` is a date 'YYYY-MM-DD' in ``zone``, the recorder's time zone (UTC without one), and
    each row's ``start_local`` its start there (None without a zone). SQLite sorts and pages, so a
    season of detections never sits in memory at once. ``as_of``: sorted and filtered by the verdicts given until then (the
    time the first page was shown), so that the pages after it follow on from it: judging a page
    moved its rows out of the order, and 'next' skipped a page's worth (a review). The verdicts
    shown are the latest, whenever given. ``upto``: only detections with ids up to it (the newest
    when the first page was shown, ``newest_detection_id``): ``watch`` adding detections while the
    page was open pushed rows of the first page onto the next, shown twice (a team trial).
    """
    if order not in ORDERS:
        raise ReviewError(f"unknown review order {order!r}: choose one of {', '.join(ORDERS)}")
    clauses, params = _shown_filters(label, day, bundle_id, zone)
    if unreviewed_only:
        clauses.append("v.verdict IS NULL")
    if upto is not None:   # ids only grow (AUTOINCREMENT): a later row is one stored since
        clauses.append("d.id <= ?")
        params.append(upto)
    false_rate = {c.label: c.false_alarm_rate for c in precision_by_class(db_path, as_of=as_of)}
    snapshot, since = reviews_as_of(as_of)
    sql = page_query(order, clauses, snapshot)
    with closing(open_read_only(db_path, ReviewError)) as conn:
        conn.create_function("uncertainty", 2, uncertainty, deterministic=True)
        conn.create_function("false_rate", 1, lambda lab: false_rate.get(lab, 0.5), deterministic=True)
        try:
            rows = [dict(r) for r in conn.execute(sql, [*since, *params, limit, offset])]
            for row in rows:
                found = conn.execute(_EARLIER, row).fetchone()
                row["earlier"] = found[0] if found else None
                row["key"] = detection_key(row)
                row["start_local"] = tables.local_time(row["start_utc"], zone)
                row["lead"] = lead_windows(row["votes"])
            return rows
        except sqlite3.Error as e:
            raise ReviewError(f"cannot read detections from {db_path}: {e}") from e


def page_query(order: str, clauses: list[str], snapshot: str) -> str:
    """The statement of one page of ``list_detections`` in ``order``, filtered by ``clauses`` on
    detections ``d``, after the ``WITH`` of ``reviews_as_of`` (``snapshot``); its parameters: the
    snapshot's, the clauses', then LIMIT and OFFSET. It calls the functions ``uncertainty`` and
    ``false_rate``, which the connection must define."""
    # Half the weight on the detection's own uncertainty, half on its class's false alarms.
    # The page first (sorted and cut by SQLite), then each of its rows' earlier verdict.
    # ``v``: the verdicts as of the first page, which sort and filter; ``now``: the latest, shown.
    return f"""{snapshot + ',' if snapshot else 'WITH'} {_JUDGED_ELSEWHERE}
              SELECT d.id, d.source, d.start_s, d.end_s, d.start_utc, d.label, d.confidence, d.votes,
                     d.bundle_id, d.clip_path, now.verdict, now.new_label, now.reviewer,
                     0.5 * uncertainty(d.confidence, d.votes) + 0.5 * false_rate(d.label) AS priority
              FROM detections d LEFT JOIN ({LATEST_VERDICTS}) v ON v.source = d.source
                   AND v.start_s = d.start_s AND v.label = d.label AND v.bundle_id = d.bundle_id
                   LEFT JOIN ({latest_verdicts('main.reviews')}) now
                   ON now.source = d.source AND now.start_s = d.start_s AND now.label = d.label
                   AND now.bundle_id = d.bundle_id
              WHERE {' AND '.join(clauses)} ORDER BY {_ORDER_BY[order]} LIMIT ? OFFSET ?"""


def newest_detection_id(db_path: Path) -> int:
    """The id of the newest detection stored (0 when none): the detections a list shown now holds."""
    with closing(open_read_only(db_path, ReviewError)) as conn:
        return conn.execute("SELECT coalesce(max(id), 0) FROM detections").fetchone()[0]


def _shown_filters(label: str | None, day: str | None, bundle_id: str | None,
                   zone: dt.tzinfo | None) -> tuple[list[str], list]:
    """SQL conditions on detections ``d`` for the page's species, day (in ``zone``) and bundle."""
    clauses, params = ["1"], []
    if label:
        clauses.append("d.label = ?")
        params.append(label)
    if day:
        try:
            clauses.append("d.start_utc >= ? AND d.start_utc < ?")
            params.extend(day_bounds(day, zone))
        except (ValueError, OverflowError):   # 2024-02-30; a local day the calendar cannot end in UTC
            raise ReviewError(f"day {day!r} is no date (YYYY-MM-DD) that can be shown here") from None
    if bundle_id:
        clauses.append("d.bundle_id = ?")
        params.append(bundle_id)
    return clauses, params


def detections_since(db_path: Path, upto: int, *, label: str | None = None, day: str | None = None,
                     bundle_id: str | None = None, zone: dt.tzinfo | None = None) -> int:
    """How many detections the page's filters show were stored after the one with id ``upto``
    (``newest_detection_id``): it counted every new detection, another species' too (a review)."""
    clauses, params = _shown_filters(label, day, bundle_id, zone)
    with closing(open_read_only(db_path, ReviewError)) as conn:
        return conn.execute(f"SELECT count(*) FROM detections d WHERE d.id > ? AND {' AND '.join(clauses)}",
                            [upto, *params]).fetchone()[0]


MAX_IDS_ASKED = 200   # a page holds 50: the latest verdicts of a few pages at most, per request


def latest_verdicts_of(db_path: Path, ids: list[int], keys: list[str] | None = None) -> dict[int, dict | None]:
    """The latest verdict, by anyone, on each of the detections ``ids``: ``verdict``, ``new_label``,
    ``reviewer``, or None where it has none. The page asks for its rows' now and then: a team's
    verdicts were seen by the others only on reload, and two reviewers judged the same rows (a team
    trial). An id that no detection has, or (with ``keys``, the page's ``detection_key`` of each)
    one that now names another detection, is left out: the page leaves that row as it was, as it
    neither judges nor plays another detection than the one it showed."""
    ids = [valid_id(i) for i in ids]
    if len(ids) > MAX_IDS_ASKED:
        raise ReviewError(f"at most {MAX_IDS_ASKED} detections at a time, not {len(ids)}")
    if keys is not None and len(keys) != len(ids):
        raise ReviewError(f"{len(keys)} keys for {len(ids)} ids")
    if not ids:
        return {}
    with closing(open_read_only(db_path, ReviewError)) as conn:
        judged = has_table(conn, "reviews")
        verdicts = (f"LEFT JOIN ({LATEST_VERDICTS}) v ON v.source = d.source AND v.start_s = d.start_s "
                    "AND v.label = d.label AND v.bundle_id = d.bundle_id" if judged else
                    "LEFT JOIN (SELECT NULL AS verdict, NULL AS new_label, NULL AS reviewer) v ON 0")
        rows = conn.execute(f"""
            SELECT d.*, v.verdict AS v_verdict, v.new_label AS v_new_label, v.reviewer AS v_reviewer
            FROM detections d {verdicts} WHERE d.id IN ({', '.join('?' * len(ids))})""", ids).fetchall()
    shown = dict(zip(ids, keys)) if keys is not None else None
    return {row["id"]: {"verdict": row["v_verdict"], "new_label": row["v_new_label"], "reviewer": row["v_reviewer"]}
            if row["v_verdict"] is not None else None
            for row in map(dict, rows) if shown is None or shown[row["id"]] == detection_key(row)}


def valid_id(value) -> int:
    """``value`` as a detection id: a whole number SQLite can hold (not 1.7, not true, not 10^20);
    ReviewError otherwise."""
    if type(value) is not int or not 0 < value < 2 ** 63:
        raise ReviewError(f"no detection with id {value!r}: ids are whole numbers from 1")
    return value


def detection(db_path: Path, detection_id: int) -> dict:
    """One detection with the path of its recording from the ledger; ReviewError if unknown."""
    detection_id = valid_id(detection_id)
    with closing(open_read_only(db_path, ReviewError)) as conn:
        row = conn.execute(f"SELECT d.*, {ledger_columns(conn)} FROM detections d LEFT JOIN files f "
                           "ON f.source = d.source WHERE d.id = ?", [detection_id]).fetchone()
    if row is None:
        raise UnknownDetection(f"no detection with id {detection_id} in {db_path}")
    return dict(row)


def add_verdict(db_path: Path, detection_id: int, verdict: str, reviewer: str,
                new_label: str | None = None, labels: tuple[str, ...] = (), key: str | None = None) -> dict:
    """Store ``reviewer``'s verdict on a detection (replacing their earlier one) and return the row.

    ``new_label`` is required for 'relabel' and must differ from the detected label (and be one of
    ``labels`` when given); it is ignored for other verdicts. With ``key`` (``detection_key`` of the
    detection the page showed), StaleDetection when the id now names another detection.
    """
    if verdict not in REVIEW_VERDICTS:
        raise ReviewError(f"unknown verdict {verdict!r}: choose one of {', '.join(REVIEW_VERDICTS)}")
    if not reviewer.strip():
        raise ReviewError("a verdict needs a reviewer name")
    try:
        found = detection(db_path, detection_id)
    except UnknownDetection:
        if key is None:
            raise
        # The page showed it: re-analysed away since (a review: a 400 and an alert that did not
        # say to reload, where a detection replaced under the same id said so).
        raise StaleDetection(f"detection {detection_id} is no longer stored (re-analysed since the page showed it): "
                             f"reload the page") from None
    if key is not None and detection_key(found) != key:
        raise StaleDetection(f"detection {detection_id} is not the one the page showed (re-analysed, or another "
                             f"database): reload the page")
    if verdict == "relabel":
        known = f": choose one of {', '.join(x for x in labels if x != found['label'])}" if labels else ""
        if not new_label:
            raise ReviewError(f"relabel of detection {detection_id} needs another known label, got none{known}")
        if new_label == found["label"]:
            raise ReviewError(f"relabel of detection {detection_id} needs another known label: it is already "
                              f"{new_label!r} (for a right label, give the verdict 'correct'){known}")
        if labels and new_label not in labels:
            raise ReviewError(f"relabel of detection {detection_id} needs another known label, got unknown label "
                              f"{new_label!r}{known}")
    else:
        new_label = None
    row = {"detection_id": detection_id, "source": found["source"], "start_s": found["start_s"],
           "label": found["label"], "bundle_id": found["bundle_id"], "verdict": verdict,
           "new_label": new_label, "reviewer": reviewer, "reviewed_at": utc_iso(dt.datetime.now(dt.timezone.utc))}
    try:
        conn = sqlite3.connect(Path(db_path).resolve().as_uri() + "?mode=rw", uri=True,
                               timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    except sqlite3.Error as e:
        raise ReviewError(f"cannot open detections database {db_path}: {e}") from e
    try:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock first; the daemon's commits are short
        # Still there under the lock: a reanalyse between the read above and now may have removed it.
        if conn.execute("SELECT 1 FROM detections WHERE id = :detection_id AND source = :source AND start_s = :start_s "
                        "AND label = :label AND bundle_id = :bundle_id", row).fetchone() is None:
            conn.execute("ROLLBACK")
            raise StaleDetection(f"detection {detection_id} was re-analysed as the verdict was stored: reload the page")
        row["reviewed_at"] = _after_every_verdict(conn, row)
        conn.execute("""
            INSERT INTO reviews (detection_id, source, start_s, label, bundle_id, verdict, new_label,
                                 reviewer, reviewed_at)
            VALUES (:detection_id, :source, :start_s, :label, :bundle_id, :verdict, :new_label,
                    :reviewer, :reviewed_at)
            ON CONFLICT (source, start_s, label, bundle_id, reviewer) DO UPDATE SET
                detection_id = excluded.detection_id, verdict = excluded.verdict,
                new_label = excluded.new_label, reviewed_at = excluded.reviewed_at""", row)
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        if error_code(e) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            # Not the reviewer's mistake: a 400 and "database is locked" read as a verdict refused
            # for good (a field-station trial, a script judging beside watch, sync and reanalyse).
            raise DatabaseBusy(f"verdict not stored: another process has held the write lock of {db_path} for "
                               f"over {BUSY_TIMEOUT_MS / 1000:g} s; give it again") from e
        raise ReviewError(f"cannot store the verdict in {db_path}: {e}") from e
    finally:
        conn.close()
    return row


def _after_every_verdict(conn: sqlite3.Connection, row: dict) -> str:
    """The verdict's time, or a millisecond after the latest one on its detection when the clock
    reads earlier (a Pi without a real-time clock set back after a power cut): the latest verdict
    is the one given last, and the page, adapt and the fleet tell it by its time (a review)."""
    (latest,) = conn.execute("SELECT max(reviewed_at) FROM reviews WHERE source = ? AND start_s = ? AND label = ? "
                             "AND bundle_id = ?", [row["source"], row["start_s"], row["label"],
                                                   row["bundle_id"]]).fetchone()
    if latest is None or latest < row["reviewed_at"]:
        return row["reviewed_at"]
    return utc_iso(parse_utc(latest) + dt.timedelta(milliseconds=1))


def days_and_labels(db_path: Path, zone: dt.tzinfo | None = None) -> tuple[list[str], list[str], list[str]]:
    """The days (in ``zone``, the recorder's time zone; UTC without one) and labels that have
    detections, and the bundle ids that have detections or analysed a recording (``analyses``: a
    bundle that found nothing has hours to chart), for the page's filters."""
    with closing(open_read_only(db_path, ReviewError)) as conn:
        # Distinct quarter hours, each placed in its local day (no zone's midnight falls inside one).
        quarters = conn.execute(f"SELECT DISTINCT {quarter_hour('start_utc')} FROM detections "
                                "WHERE start_utc IS NOT NULL")
        days = sorted({local(q[0], zone).date().isoformat() for q in quarters})
        return days, *_labels_and_bundles(conn)


def labels_and_bundles(db_path: Path) -> tuple[list[str], list[str]]:
    """``days_and_labels`` without the days, for what needs no day: a verdict, the charts' and the
    precision's bundle check (the days read every detection's time, at each verdict)."""
    with closing(open_read_only(db_path, ReviewError)) as conn:
        return _labels_and_bundles(conn)


def _labels_and_bundles(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    labels = [r[0] for r in conn.execute("SELECT DISTINCT label FROM detections ORDER BY 1")]
    analysed = " UNION SELECT bundle_id FROM analyses" if has_table(conn, "analyses") else ""
    bundles = [r[0] for r in conn.execute(f"SELECT DISTINCT bundle_id FROM detections{analysed} ORDER BY 1")]
    return labels, bundles


def bundle_labels(db_path: Path) -> list[str]:
    """The labels, background apart, of the bundles that ran on this database (its ``bundles``
    table: what ``watch``, ``listen`` and ``reanalyse`` recorded), so a call can be relabelled to a
    species its site's bundle knows and has not yet detected; none when none is recorded."""
    with closing(open_read_only(db_path, ReviewError)) as conn:
        if not has_table(conn, "bundles"):
            return []
        manifests = [r[0] for r in conn.execute("SELECT manifest FROM bundles")]
    labels: set[str] = set()
    for text in manifests:
        try:
            manifest = json.loads(text)
            background = manifest.get("background_label", "background")
            labels.update(str(label) for label in manifest["labels"] if label != background)
        except (ValueError, TypeError, KeyError, AttributeError):   # a manifest this edgemon cannot read
            continue
    return sorted(labels)


REVIEW_COLUMNS = ("id", "detection_id", "source", "start_s", "end_s", "start_utc", "device_id", "label",
                  "confidence", "bundle_id", "verdict", "new_label", "reviewer", "reviewed_at", "current",
                  "start_local")


def write_reviews_csv(db_path: Path, out: TextIO, zone: dt.tzinfo | None = None) -> int:
    """Every stored verdict (all reviewers) with its detection's time, device and confidence, as CSV
    in review order; returns the number of rows. A detection no longer stored leaves those blank.
    ``current`` is 1 for the verdict that stands (the latest on its detection, as the page,
    precision and adapt read it), 0 for one it superseded or whose detection is no longer stored
    (a reanalysis dropped it; the page and precision leave it out, a review): a precision counted
    from every row counted the superseded ones too (a newcomer trial). ``start_local``: the
    detection's start in ``zone`` (the recorder's time zone), as exports give it; empty without
    one. Reads only (a database from before reviews has none to give)."""
    rows = []
    with closing(open_read_only(db_path, ReviewError)) as conn:
        try:
            if "reviews" in edgemon_tables(conn, db_path, ReviewError, NOT_CHANGED):
                rows = conn.execute(f"""
                SELECT r.id, r.detection_id, r.source, r.start_s, d.end_s, d.start_utc, d.device_id, r.label,
                       round(d.confidence, 4), r.bundle_id, r.verdict, r.new_label, r.reviewer, r.reviewed_at,
                       r.id IN (SELECT id FROM ({LATEST_VERDICTS})) AND d.source IS NOT NULL
                FROM reviews r LEFT JOIN detections d ON d.source = r.source AND d.start_s = r.start_s
                     AND d.label = r.label AND d.bundle_id = r.bundle_id
                ORDER BY r.reviewed_at, r.id""").fetchall()
        except sqlite3.Error as e:   # a card gone bad: one line, not a traceback (a review)
            raise ReviewError(f"cannot read verdicts from {db_path}: {e}") from e
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REVIEW_COLUMNS)
    writer.writerows([tables.cell(v) for v in (*r, tables.local_time(r[5], zone))]   # a reviewer's name is free text
                     for r in rows)
    return len(rows)
