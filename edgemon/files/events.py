"""File-system events for ``edgemon watch``: a watchdog observer of the recorder's directory that
only enqueues candidate paths (hints), whether it still delivers them, and stopping it.

Events are hints; the watcher's ledger and rescans are the truth, so an observer that cannot be
made or has died costs latency, never a recording (the watcher restarts it and rescans).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
from pathlib import Path

from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileAttribEvent, FileClosedEvent, FileCreatedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer

from edgemon.files.directory import watched
from edgemon.safetext import shown

log = logging.getLogger(__name__)


class ShutdownRace(logging.Filter):
    """watchdog 7 logs an ERROR when its inotify emitter reads once more after being stopped (a
    race inside watchdog at shutdown, harmless: watchdog PR #963); 'watch --until-idle' printed
    it on about one exit in five. A recorder's log must not cry wolf, so that one line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(ShutdownRace())


class Hints(FileSystemEventHandler):
    """Watchdog handler: only enqueues candidate paths; all work happens on the watcher's thread."""

    def __init__(self, hints: queue.Queue, root: Path):
        self.hints = hints
        self.root = root

    # Opening and reading a file raises events too: reacting to those would make the watcher's
    # own reads wake it up forever. "attrib": a `touch` (what `edgemon status` says to do with a
    # mended quarantined file) changes no directory, so a quick rescan never saw it (a review:
    # tried again only at the hourly full rescan); reading a file raises none.
    RELEVANT = frozenset({"created", "modified", "moved", "closed", "attrib"})

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in self.RELEVANT:
            return
        for attr in ("src_path", "dest_path"):
            path = getattr(event, attr, None)
            if path and not event.is_directory and watched(self.root, Path(os.fsdecode(path))):
                self.hints.put(Path(os.fsdecode(path)))


# The events asked of the kernel: those ``Hints`` takes, and a directory's creation or move (its
# files then come as created or moved). Opening and reading a file, or listing a directory, raise
# no event any more: each raised two (opened, closed) that woke two observer threads only to be
# dropped, two per directory listed by a full rescan and several per file analysed (the idle-cost
# trial).
ASKED = [FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileMovedEvent, FileClosedEvent, DirCreatedEvent,
         DirMovedEvent]


def start_observer(root: Path, hints: queue.Queue) -> Observer | None:
    """A started observer putting ``root``'s recordings on ``hints``; None when none can be made
    (no inotify instance left). One that could not start (the card is unmounted) is returned
    unstarted: ``observing`` is then False and the caller retries."""
    try:
        observer = Observer()       # on Linux this opens an inotify instance and starts its reader
    except OSError as exc:
        log.warning("cannot watch %s for events: %s", shown(root), shown(exc))
        return None
    try:
        observer.schedule(Hints(hints, root), str(root), recursive=True, event_filter=ASKED)
        observer.start()
    except OSError as exc:  # the card is unmounted: rescans still run; retried each rescan period
        limit = (" (the inotify watch limit, one watch a folder: raise it with sysctl fs.inotify.max_user_watches)"
                 if exc.errno == errno.ENOSPC else "")
        log.warning("cannot watch %s for events: %s%s; new recordings are found by rescans meanwhile", shown(root),
                    shown(exc), limit)
    return observer


def observing(observer: Observer | None) -> bool:
    """The observer's thread, every emitter thread (an emitter stops on its own when the watched
    directory disappears) and its inotify reader are alive.

    watchdog 7 reads inotify on a thread of its own per observer; when that thread dies (an
    exception in its callbacks), the observer and emitter threads still look alive but no event
    comes any more: so it is checked too (``_inotify_fd``; absent elsewhere than Linux).
    """
    if observer is None:
        return False
    reader = getattr(observer, "_inotify_fd", None)
    return (observer.is_alive() and bool(observer.emitters) and all(e.is_alive() for e in observer.emitters)
            and (reader is None or reader.is_alive()))


def stop_observer(observer: Observer | None) -> None:
    """Stop ``observer`` and its threads (its inotify reader too, even if it never started)."""
    if observer is not None:
        observer.stop()
        if observer.is_alive():
            observer.join()
