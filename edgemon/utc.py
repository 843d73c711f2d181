"""UTC time as edgemon stores it: the zone, the store's fixed-width text
('2024-05-01T06:00:00.000Z'), and reading such text back."""

from __future__ import annotations

import datetime as dt
import re

UTC = dt.timezone.utc

# "UTC+8", "UTC-05:00", "UTC+5:30": a fixed offset, as a Song Meter's time zone setting and an
# AudioMoth's comment say it.
_FIXED_OFFSET = re.compile(r"UTC([+-])(\d{1,2})(?::(\d{2}))?")


def fixed_offset(text: str) -> dt.timezone | None:
    """``text`` as a fixed UTC offset ('UTC+8', 'UTC-05:00', 'UTC+5:30'), or None when it is not
    one (or no offset there is: over 14 h, minutes over 59)."""
    m = _FIXED_OFFSET.fullmatch(text.strip())
    if not m or int(m[2]) > 14 or int(m[3] or 0) > 59:
        return None
    offset = dt.timedelta(hours=int(m[2]), minutes=int(m[3] or 0))
    return dt.timezone(-offset if m[1] == "-" else offset)


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
