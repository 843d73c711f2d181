"""One way for tests to wait for a condition: poll it until it holds or a timeout passes.

`poll_until` reports whether the condition came true (for a test that then checks the outcome
itself); `wait_until` fails the test naming what it waited for; `wait_for_text` waits for a log
file to contain a text a number of times."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def poll_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Call ``condition`` every ``interval`` s until it is truthy (True) or ``timeout`` s passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_until(condition: Callable[[], object], timeout: float, what: str | Callable[[], str],
               interval: float = 0.05) -> float:
    """Poll ``condition`` until truthy; returns the seconds waited. Raises AssertionError naming
    ``what`` (a text, or a callable giving it at the time of failure) and the timeout in s."""
    start = time.monotonic()
    if not poll_until(condition, timeout, interval):
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")
    return time.monotonic() - start


def wait_for_text(path: Path, text: str, count: int, timeout: float, interval: float = 0.1) -> float:
    """Wait until the file at ``path`` holds ``text`` at least ``count`` times; the failure shows the file."""
    return wait_until(lambda: path.read_text().count(text) >= count, timeout,
                      lambda: f"{count}x {text!r} in the log:\n{path.read_text()}", interval)
