"""Graceful stop for the long-running commands: SIGTERM (systemd) or SIGINT (Ctrl-C) sets an
Event the work loop checks, so the file in hand finishes and the process exits cleanly; and
whether another process is still there (signal 0), for what a killed writer left behind."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from edgemon.errors import EdgemonError

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(finishing: str = "the current file", abandon: str | None = None) -> Iterator[threading.Event]:
    """An Event set by SIGTERM or SIGINT; the previous handlers come back at the end.
    ``finishing``: what the command completes before it stops, for the log line. ``abandon``:
    what a second signal gives up at once (the Event's ``now`` is then True, for the work to look
    at); None: a second signal is said as the first (a newcomer trial pressed Ctrl-C twice and
    waited for an hour's file all the same)."""
    stop = threading.Event()
    stop.now = False
    previous = {}

    def handler(signum, frame):
        if abandon is not None and getattr(stop, "signum", None) is not None:
            log.warning("signal %d again: stopping now; %s", signum, abandon)
            stop.now = True
            return
        log.info("signal %d: stopping after %s%s", signum, finishing,
                 " (again to stop at once)" if abandon is not None else "")
        stop.signum = signum   # for an exit status that says the work was stopped, where it has an end
        # Set from another thread: the handler runs on the main thread, which may be inside
        # stop.wait() holding the Event's (non-reentrant) lock; set() here would wait for it forever.
        threading.Thread(target=stop.set, name="stop-on-signal", daemon=True).start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class StoppedEarly(EdgemonError):
    """A run with an end (``watch --until-idle``) stopped by a signal before it got there: its exit
    status is 128 + the signal's number, as the signal would give, not 0 ("done")."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as Ctrl-C's KeyboardInterrupt is (``terminate_as_interrupt``)."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd stopping a timer's job, ``timeout``) interrupts a short command as Ctrl-C
    does, by KeyboardInterrupt, so its cleanup runs: an export killed so used to leave its hidden
    temp files behind, complete tables that sync tools then copied (a newcomer trial found 743)."""
    def interrupt(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (another user's counts; a number no pid
    can be does not)."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (ProcessLookupError, OverflowError):
        return False
    return True
