"""Calls per species by hour of day and by day, with the effort (hours of audio analysed) beside
them, as small server-side SVG: a grid a person reads at a glance, no plotting library."""

from __future__ import annotations

import datetime as dt
import html
import sqlite3
from collections import defaultdict
from contextlib import closing
from pathlib import Path

from edgemon.review.local_time import local, quarter_hour, spans_by_local_hour, zone_name
from edgemon.review.reviews import ReviewError
from edgemon.review.spectrogram import PALETTE
from edgemon.storage.readonly import analyses_table, has_table, open_read_only, table_columns
from edgemon.utc import parse_utc


def effort_hours(db_path: Path, bundle_id: str | None = None,
                 zone: dt.tzinfo | None = None) -> tuple[dict[int, float], dict[str, float]]:
    """Hours of audio analysed per hour of day (0..23) and per day ('YYYY-MM-DD') in ``zone`` (the
    recorder's; UTC without one): each finished recording spread over the hours it spans (with
    ``bundle_id``, those that bundle analysed: ``analyses``), plus the live streams' analysed seconds."""
    by_hour: dict[int, float] = defaultdict(float)
    by_day: dict[str, float] = defaultdict(float)

    def add(start: dt.datetime, seconds: float) -> None:
        try:
            for hour, day, hours in spans_by_local_hour(start, seconds, zone):
                by_hour[hour] += hours
                by_day[day] += hours
        except OverflowError:   # a recorder's name at the calendar's end: no hour after it to chart
            pass

    with closing(open_read_only(db_path, ReviewError)) as conn:
        for start, seconds in conn.execute(*_recordings_analysed(conn, bundle_id)):
            add(parse_utc(start), seconds)
        quarters = []
        if has_table(conn, "coverage"):   # else a database from before live coverage existed
            # A minute's seconds lie in its minute, so in its quarter hour: summed there by SQLite
            # (a year of per-minute live coverage is 525 600 rows, each spread in Python before).
            listened, params = _listened_by(conn, bundle_id)
            quarters = conn.execute(f"SELECT {quarter_hour('minute_utc')}, sum(analysed_s) FROM coverage "
                                    f"WHERE analysed_s > 0 AND ({listened}) GROUP BY 1", params).fetchall()
        for quarter, seconds in quarters:
            at = local(quarter, zone)
            by_hour[at.hour] += seconds / 3600
            by_day[at.date().isoformat()] += seconds / 3600
    return dict(by_hour), dict(by_day)


def _listened_by(conn: sqlite3.Connection, bundle_id: str | None) -> tuple[str, list]:
    """The SQL condition (and its parameters) on a coverage row that ``bundle_id`` was the bundle
    listening then: the listen run in force at the row's end (the latest to start before it, from
    the heartbeats) ran it. Every row without a bundle, or in a database whose listen runs recorded
    none (the charts of a bundle that only re-analysed recordings drew the live hours another
    bundle listened to as its own, silent ones: a live trial)."""
    if bundle_id is None or not has_table(conn, "heartbeats"):
        return "1", []
    runs = conn.execute("SELECT min(started_utc), bundle_id FROM heartbeats WHERE mode = 'listen' "
                        "GROUP BY run_id ORDER BY 1").fetchall()
    if not any(bundle for _, bundle in runs):
        return "1", []
    spans: list[list] = []
    for i, (start, bundle) in enumerate(runs):
        if bundle != bundle_id:
            continue
        until = runs[i + 1][0] if i + 1 < len(runs) else None
        if spans and spans[-1][1] == start:   # the run before was this bundle's too: one span
            spans[-1][1] = until
        else:
            spans.append([start, until])
    if not spans:
        return "0", []
    clauses, params = [], []
    for start, until in spans:
        clauses.append("(end_utc > ?" + ("" if until is None else " AND end_utc <= ?") + ")")
        params.extend([start] if until is None else [start, until])
    return " OR ".join(clauses), params


def _recordings_analysed(conn: sqlite3.Connection, bundle_id: str | None) -> tuple[str, list]:
    """The query of the finished recordings' starts and durations (with ``bundle_id``: those it
    analysed; before ``schema.m014_analyses``, those the migration would say it analysed, as the
    recordings export takes them: all of them were charted, calls of one recording over hours of
    every recording). A triggered recording counts the silent stretches the recorder left out as
    listened to, as its detections' times count them (``files.span_s``; a review: a call was
    charted in an hour drawn as "not listening")."""
    whole = "f.state = 'done' AND f.start_utc IS NOT NULL"
    left_out = "coalesce(f.span_s - f.duration_s, 0)" if "span_s" in table_columns(conn, "files") else "0"
    if bundle_id:
        seconds = f"coalesce(a.duration_s, f.duration_s) + {left_out}"
        return (f"SELECT f.start_utc, {seconds} AS seconds FROM {analyses_table(conn)} a "
                f"JOIN files f ON f.source = a.source WHERE a.bundle_id = ? AND {whole} "
                f"AND coalesce(a.duration_s, f.duration_s) > 0", [bundle_id])
    return f"SELECT f.start_utc, f.duration_s + {left_out} FROM files f WHERE {whole} AND f.duration_s > 0", []


def calls(db_path: Path, bundle_id: str | None = None, zone: dt.tzinfo | None = None) -> tuple[dict, dict]:
    """Detections per (label, hour) and per (label, day) in ``zone`` (UTC without one); detections
    without a time are left out. Counted by SQLite per UTC quarter hour, each quarter then placed
    in its local hour and day once."""
    where, params = "start_utc IS NOT NULL", []
    if bundle_id:
        where += " AND bundle_id = ?"
        params.append(bundle_id)
    with closing(open_read_only(db_path, ReviewError)) as conn:
        rows = conn.execute(f"SELECT label, {quarter_hour('start_utc')} AS quarter, count(*) AS n "
                            f"FROM detections WHERE {where} GROUP BY 1, 2", params).fetchall()
    by_hour: dict = defaultdict(int)
    by_day: dict = defaultdict(int)
    placed: dict[str, dt.datetime] = {}   # each quarter once, whatever the labels in it
    for row in rows:
        at = placed.get(row["quarter"]) or placed.setdefault(row["quarter"], local(row["quarter"], zone))
        by_hour[row["label"], at.hour] += row["n"]
        by_day[row["label"], at.date().isoformat()] += row["n"]
    return dict(by_hour), dict(by_day)


def grid_svg(title: str, labels: list[str], columns: list, column_names: list[str],
             counts: dict, effort: dict, cell: int = 28, times: str = "UTC") -> str:
    """A heatmap, one row per label and one column per hour or day: the cell's colour is calls per
    hour of effort, its text the count; the top row is the effort in hours. Empty-effort columns
    are hatched grey, so "no calls" and "not listening" never look alike. ``times``: the zone the
    columns are in, as the footer names it."""
    left, top = 150, 44
    width, height = max(480, left + cell * len(columns) + 10), top + cell * (len(labels) + 1) + 30
    rates = [counts.get((label, c), 0) / effort[c] for label in labels for c in columns if effort.get(c)]
    peak = max(rates, default=0) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{html.escape(title)}" font-family="sans-serif" font-size="11">',
           f'<text x="4" y="16" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    for i, name in enumerate(column_names):
        x = left + i * cell + cell / 2
        out.append(f'<text x="{x}" y="{top - 6}" text-anchor="middle">{html.escape(name)}</text>')
    max_effort = max(effort.values(), default=0) or 1.0
    out.append(f'<text x="4" y="{top + cell * 0.65}">effort (h analysed)</text>')
    for i, c in enumerate(columns):
        hours = effort.get(c, 0.0)
        bar = (cell - 4) * hours / max_effort
        x = left + i * cell
        out.append(f'<rect x="{x + 2}" y="{top + cell - 2 - bar:.1f}" width="{cell - 4}" height="{bar:.1f}" fill="#888">'
                   f'<title>{html.escape(str(column_names[i]))}: {hours:.2f} h analysed</title></rect>')
    for r, label in enumerate(labels):
        y = top + cell * (r + 1)
        out.append(f'<text x="4" y="{y + cell * 0.65}">{html.escape(label)}</text>')
        for i, c in enumerate(columns):
            x, n, hours = left + i * cell, counts.get((label, c), 0), effort.get(c, 0.0)
            if not hours:
                fill = "#ddd"
            else:
                rgb = PALETTE[int(255 * min(1.0, n / hours / peak))] if n else (255, 255, 255)
                fill = "#%02x%02x%02x" % tuple(int(v) for v in rgb)
            tip = f"{label}, {column_names[i]}: {n} call(s) in {hours:.2f} h"
            out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}" stroke="#eee">'
                       f'<title>{html.escape(tip)}</title></rect>')
            if n:
                out.append(f'<text x="{x + cell / 2}" y="{y + cell * 0.65}" text-anchor="middle" '
                           f'fill="{"#fff" if n / max(hours, 1e-9) / peak < 0.6 else "#000"}">{n}</text>')
    out.append(f'<text x="4" y="{height - 8}" fill="#555">colour: calls per hour analysed; grey: not listening; '
               f'times {html.escape(times)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def charts_svg(db_path: Path, bundle_id: str | None = None, zone: dt.tzinfo | None = None) -> tuple[str, str]:
    """The by-hour-of-day and the by-day SVG charts of the database at ``db_path``, in ``zone``
    (the recorder's time zone; UTC without one)."""
    effort_hour, effort_day = effort_hours(db_path, bundle_id, zone)
    by_hour, by_day = calls(db_path, bundle_id, zone)
    labels = sorted({label for label, _ in by_hour} | {label for label, _ in by_day})
    hours = list(range(24))
    times = zone_name(zone)
    hour_svg = grid_svg(f"Calls by hour of day ({times})", labels, hours, [f"{h:02d}" for h in hours], by_hour,
                        effort_hour, times=times)
    # The season's days, the whole database's: a bundle's chart greys the days it never analysed.
    season = set(effort_day) | set(effort_hours(db_path, None, zone)[1] if bundle_id else ())
    days, names = day_columns(season | {d for _, d in by_day})
    day_svg = grid_svg("Calls by day", labels, days, names, by_day, effort_day, cell=44, times=times)
    return hour_svg, day_svg


# A run of days without audio longer than this is one column: a recorder clock reset to 2000
# before a season of 2024 would otherwise draw 9 000 grey columns.
LONGEST_GAP_DAYS = 31


def day_columns(days: set[str]) -> tuple[list[str], list[str]]:
    """The by-day chart's columns ('YYYY-MM-DD') and their names ('MM-DD'): ``days`` and every
    day between them, so a day with no audio is a grey column, not a gap the eye skips (a season
    trial: the gap day between 03-03 and 03-05 was not drawn at all, and a bundle's chart left out
    the days it never analysed, which the charts promise grey). A longer run of days without audio
    is one column, named by how many days it holds ('+90 d')."""
    columns: list[str] = []
    names: list[str] = []
    before: dt.date | None = None
    for day in sorted(days):
        at = dt.date.fromisoformat(day)
        missing = 0 if before is None else (at - before).days - 1
        if missing > LONGEST_GAP_DAYS:
            columns.append(f"{before + dt.timedelta(days=1)}..{at - dt.timedelta(days=1)}")
            names.append(f"+{missing} d")
        else:
            for n in range(1, missing + 1):
                columns.append((before + dt.timedelta(days=n)).isoformat())
                names.append(columns[-1][5:])
        columns.append(day)
        names.append(day[5:])
        before = at
    return columns, names
