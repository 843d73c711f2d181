"""UTC time as edgemon stores it: the zone, the store's fixed-width text
('2024-05-01T06:00:00.000Z'), and reading such text back."""

from __future__ import annotations

import datetime as dt

UTC = dt.timezone.utc


def utc_iso(value: str | dt.datetime, *, naive_is_utc: bool = False) -> str:
    """``value`` as the store's UTC text, to the millisecond: '2024-05-01T06:00:00.000Z'.

    Fixed width, so comparing the text compares the times. A time without an offset is rejected
    with ValueError (its zone is unknown) unless ``naive_is_utc`` says to read it as UTC.
    """
    when = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        if not naive_is_utc:
            raise ValueError(f"time without a UTC offset: {value!r}")
        when = when.replace(tzinfo=UTC)
    utc = when.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


def parse_utc(text: str) -> dt.datetime:
    """ISO 8601 ``text`` ('...Z' or with an offset) as an aware datetime; text without an offset
    is read as UTC, since the store writes UTC with or without its Z. ValueError if not ISO 8601."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)
