"""Coverage of a live stream: for every UTC minute, seconds analysed and seconds lost, and why.

Without it a minute with no detection cannot be told apart from a minute nobody listened to. The
ledger keeps one running boundary, ``accounted_until``: every stretch of host time after it is
added exactly once, as analysed or as one kind of loss, so a minute never sums to more than 60 s
however the stretches are reported (late, overlapping, after a clock correction). A clock set
back passes again host time already counted (by this run, or by the run before a restart): the
stretches counted in the last hour are remembered and skipped.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import defaultdict

from edgemon.storage.rows import COVERAGE_LOSSES, CoverageMinute
from edgemon.utc import UTC

log = logging.getLogger(__name__)

KINDS = ("analysed",) + COVERAGE_LOSSES
MAX_DAEMON_GAP_S = 31 * 86400  # older gaps are left out: likely a clock set after the fact
# How far back the time counted is remembered. A clock set back further had run far ahead, counting
# minutes at wrong times: counting goes on (those minutes may then hold more than 60 s; logged).
MAX_SET_BACK_S = 3600.0
# Stretches this close are one: the host time of each block is re-read (``HostClock``), and at
# today's Unix times it wobbles by a float step (2.4e-7 s). Unmerged, an hour of listening kept
# ~9,000 stretches, and every block's accounting scanned and sorted them (a soak trial: CPU ten
# times the first minute's by the hour).
MERGE_GAP_S = 1e-3


def _column(kind: str) -> str:
    return "analysed_s" if kind == "analysed" else f"lost_{kind}_s"


class CoverageLedger:
    """Per-minute seconds of one live source, accumulated in memory and taken out as deltas.

    Times are Unix seconds on the host clock (``time.time()`` scale). ``add`` returns the seconds
    it accounted (0 for a stretch already accounted); ``take`` hands out what accumulated since
    the last ``take`` as ``CoverageMinute`` rows for ``Store.add_coverage``.
    """

    def __init__(self, source: str, device_id: str, accounted_until: float | None = None):
        self.source = source
        self.device_id = device_id
        self.accounted_until = accounted_until
        # The stretches of host time counted in the last MAX_SET_BACK_S (merged; fixed host times,
        # never moved by a clock step): a clock set back passes them again, and they are skipped.
        self.counted: list[tuple[float, float]] = []
        self._minutes: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.totals: dict[str, float] = defaultdict(float)

    def add(self, kind: str, start: float, end: float) -> float:
        """Account host time ``[start, end)`` as ``kind`` (one of KINDS), split at minute edges."""
        if kind not in KINDS:
            raise ValueError(f"unknown coverage kind {kind!r}")
        if self.accounted_until is not None:
            start = max(start, self.accounted_until)
        if not end > start:
            return 0.0
        added = sum(self._add(kind, a, b) for a, b in _without(start, end, self.counted))
        self._remember(start, end)
        self.accounted_until = end
        self.totals[kind] += added
        return added

    def _remember(self, start: float, end: float) -> None:
        merged: list[tuple[float, float]] = []   # a few stretches at most: MERGE_GAP_S joins the blocks'
        for a, b in sorted(self.counted + [(start, end)]):
            if merged and a <= merged[-1][1] + MERGE_GAP_S:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        newest = merged[-1][1]
        self.counted = [(max(a, newest - MAX_SET_BACK_S), b) for a, b in merged if b > newest - MAX_SET_BACK_S]

    def _add(self, kind: str, start: float, end: float) -> float:
        at = start
        while at < end:
            minute = int(math.floor(at / 60.0))
            upto = min(end, (minute + 1) * 60.0)
            row = self._minutes[minute]
            row[_column(kind)] += upto - at
            row["end"] = max(row.get("end", 0.0), upto)
            at = upto
        return end - start

    def count(self, what: str, when: float, n: int = 1) -> None:
        """Count ``n`` events (``overflows`` or ``dropped_blocks``) in the minute holding ``when``."""
        row = self._minutes[int(math.floor(when / 60.0))]
        row[what] += n
        row["end"] = max(row.get("end", 0.0), min(when, self.accounted_until or when))

    def shift(self, seconds: float) -> None:
        """The host clock was stepped by ``seconds``: move the boundary with it, so the step is
        neither counted as lost time nor double-counted. Set back, it passes again what it counted
        in the last MAX_SET_BACK_S, which is skipped; further back, counting goes on (logged)."""
        if self.accounted_until is None:
            return
        if seconds < -MAX_SET_BACK_S:
            log.warning("%s: host clock set back %.0f s, more than the %.0f s of coverage remembered; the minutes "
                        "before that may hold more than 60 s", self.source, -seconds, MAX_SET_BACK_S)
        self.accounted_until += seconds

    def add_daemon_gap(self, previous_end: float | None, start: float) -> float:
        """Time between the end of a previous run's coverage and this run's first audio, as
        'daemon'. A negative gap (clock set back, as a Pi without a real-time clock restores an
        older time) is logged, and the minutes stored up to ``previous_end`` are not counted
        again; a gap over MAX_DAEMON_GAP_S is trimmed."""
        if previous_end is None:
            return 0.0
        # The previous run accounted the time before its end (heard, or lost and why): remembered,
        # so a clock set back over it counts none of it again.
        self._remember(previous_end - MAX_SET_BACK_S, previous_end)
        if previous_end > start:
            log.warning("%s: previous coverage ends %.1f s after this start; host clock set back?",
                        self.source, previous_end - start)
            return 0.0
        if start - previous_end > MAX_DAEMON_GAP_S:
            log.warning("%s: edgemon was down %.1f days; coverage records the last %d days of it",
                        self.source, (start - previous_end) / 86400, MAX_DAEMON_GAP_S // 86400)
            previous_end = start - MAX_DAEMON_GAP_S
        self.accounted_until = previous_end
        return self.add("daemon", previous_end, start)

    def take(self, clock_synced: bool | None) -> list[CoverageMinute]:
        """The accumulated deltas as rows, oldest minute first; the ledger starts them afresh."""
        rows = []
        for minute in sorted(self._minutes):
            row = self._minutes[minute]
            rows.append(CoverageMinute(
                source=self.source, device_id=self.device_id,
                minute_utc=dt.datetime.fromtimestamp(minute * 60, UTC),
                end_utc=dt.datetime.fromtimestamp(row.get("end", minute * 60.0), UTC),
                analysed_s=round(row["analysed_s"], 3),
                lost_overflow_s=round(row["lost_overflow_s"], 3),
                lost_dropped_s=round(row["lost_dropped_s"], 3),
                lost_device_s=round(row["lost_device_s"], 3),
                lost_daemon_s=round(row["lost_daemon_s"], 3),
                overflows=int(row["overflows"]), dropped_blocks=int(row["dropped_blocks"]),
                clock_synced=clock_synced))
        self._minutes.clear()
        return rows


def _without(start: float, end: float, taken: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``[start, end)`` less the stretches ``taken``, as the stretches left."""
    left = [(start, end)]
    for a, b in taken:
        left = [piece for s, e in left for piece in ((s, min(e, a)), (max(s, b), e)) if piece[1] > piece[0]]
    return left
