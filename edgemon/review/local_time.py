"""The review page's days and hours in the recorder's time zone (the ``timezone`` setting): a
dawn chorus on Borneo (UTC+8) was charted at 22-01 h and listed under the day before, as UTC.
Without a zone, days and hours stay UTC. The store keeps UTC text; only what is shown moves."""

from __future__ import annotations

import datetime as dt

from edgemon.utc import UTC, parse_utc, utc_iso


def quarter_hour(column: str) -> str:
    """SQL of the UTC quarter hour that ``column`` (store UTC text) falls in, as store text
    ('2024-05-01T06:45:00Z'): no zone's hour or day begins inside one (offsets are whole quarter
    hours), so SQLite groups by it and only each quarter is placed in its local hour and day."""
    return f"substr({column}, 1, 14) || printf('%02d', substr({column}, 15, 2) / 15 * 15) || ':00Z'"


def zone_name(zone: dt.tzinfo | None) -> str:
    """How the page names the times it shows: the zone's name, or 'UTC'."""
    return "UTC" if zone is None else str(zone)


def local(when: str | dt.datetime, zone: dt.tzinfo | None) -> dt.datetime:
    """The store's UTC text (or an aware time) in ``zone`` (UTC without one; and where the calendar
    cannot hold it there: a recorder's name at 9999-12-31 on UTC+8)."""
    at = parse_utc(when) if isinstance(when, str) else when
    try:
        return at.astimezone(zone or UTC)
    except OverflowError:
        return at


def day_bounds(day: str, zone: dt.tzinfo | None) -> tuple[str, str]:
    """The store's UTC texts of the first instant of local ``day`` ('YYYY-MM-DD') and of the day
    after: ``since <= start_utc < until`` is that day where the recorder stood (a day that
    summer time shortens or lengthens included). ValueError for a day that is no date."""
    first = dt.date.fromisoformat(day)
    bounds = [dt.datetime.combine(d, dt.time(), tzinfo=zone or UTC) for d in (first, first + dt.timedelta(days=1))]
    return utc_iso(bounds[0]), utc_iso(bounds[1])


def spans_by_local_hour(start: dt.datetime, seconds: float, zone: dt.tzinfo | None):
    """(local hour 0..23, local day 'YYYY-MM-DD', hours) of each piece of ``seconds`` of audio from
    ``start`` (aware) that falls in one local hour. Cut at every UTC quarter hour, which no zone's
    hour boundary falls between (offsets are whole quarter hours), so half-hour zones (India,
    UTC+5:30) and summer-time days split where the local clock does."""
    end = start + dt.timedelta(seconds=seconds)
    while start < end:
        quarter = start.astimezone(UTC).replace(second=0, microsecond=0)
        boundary = min(end, quarter + dt.timedelta(minutes=15 - quarter.minute % 15))
        at = local(start, zone)
        yield at.hour, at.date().isoformat(), (boundary - start).total_seconds() / 3600
        start = boundary
