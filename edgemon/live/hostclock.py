"""The host clock: whether it is synchronised, and when it steps."""

from __future__ import annotations

import os
import subprocess
import time


def host_clock_synced() -> bool | None:
    """Whether the host clock is NTP-synchronised (systemd's view), or None when unknown."""
    # Not the service's systemd socket: a failing timedatectl sent ERRNO= there, and systemd
    # logged a warning for each (a review).
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=5, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    answer = out.stdout.strip().lower()
    return {"yes": True, "no": False}.get(answer) if out.returncode == 0 else None


class HostClock:
    """Host (Unix, UTC) time of a capture-clock instant: ``t + offset``. ``check`` re-reads the
    offset and returns the step when the host clock jumped (NTP at boot on a Pi without RTC)."""

    def __init__(self, step_s: float = 0.5):
        self.step_s = step_s
        self.offset = time.time() - time.monotonic()

    def wall(self, capture_s: float) -> float:
        return capture_s + self.offset

    def check(self) -> float:
        new = time.time() - time.monotonic()
        step, self.offset = new - self.offset, new   # slewing is followed silently
        return step if abs(step) > self.step_s else 0.0
