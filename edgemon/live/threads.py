"""``edgemon listen``: a live microphone becomes detections, continuously, with its coverage.

Threads, and what each owns::

    PortAudio callback --(BlockQueue, bounded)--> analysis worker --(jobs)--> store writer (SQLite)
                 ^                                  resample, frontend,
    capture supervisor: open / watch / reopen       windows, vote, merge,
                                                    coverage, clips

The worker feeds the same pipeline as ``edgemon watch`` (the bundle's ``Analyzer``: streaming
log-mel, window stream, ensemble vote, merge rule), incrementally, so an event is stored as soon
as a window with another label ends it.

Time (``edgemon.live.timebase``): each stream opening is anchored once, at its first block, to
the capture clock (``time.monotonic``) minus the device's reported input latency; a sample's time
is the anchor plus its position / rate. Host (UTC) time is capture time plus the host clock's
offset, re-read so that a stepped host clock moves later times with it. The gap between a
stream's samples and the capture clock is watched: when the stream falls behind by more than
``resync_s`` (audio that never arrived, or a slow device clock) the loss is counted and the
position moves on; when it runs ahead, the anchor moves back. Detection times therefore stay
within one hop plus the device latency, and every second of host time is accounted in coverage
as analysed or lost.
"""


from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgemon.analysis.analyzer import Analyzer, make_analyzer
from edgemon.live.capture import ALSA_CARD, BlockQueue, Capture, CaptureState, resolve_device
from edgemon.live.store_writer import StoreWriter, WriterBeats
from edgemon.live.worker import ListenConfig, ListenError, Listener, ListenSummary
from edgemon.safetext import shown
from edgemon.signals import stop_on_signals
from edgemon.storage.recovery import open_or_recover
from edgemon.storage.store import DatabaseReplaced, Store
from edgemon.utc import parse_utc

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 60.0   # a thread not done this long after stop is reported, not waited for
# The analysis thread works through the audio still queued at stop (up to ``queue_s``) at its own
# pace, slower than real time on a loaded Pi: after 60 s the writer was told to finish and what the
# analysis found later was lost (a review). Within the unit's TimeoutStopSec (600 s) with the rest.
DRAIN_TIMEOUT_S = 360.0


def live_source(device_name: str) -> str:
    """The source a microphone's rows are stored under: ``live:`` and its name without the ALSA
    card number, which a replug or a reboot may change. Under "(hw:2,0)" after "(hw:1,0)" it was
    another source, and the time between the runs was counted lost nowhere (a review)."""
    return f"live:{ALSA_CARD.sub('', device_name)}"


def previous_end_of(store: Store, device_name: str) -> str | None:
    """The end of what an earlier run on this microphone accounted for: under its source, or under
    the name with the card number a database from before ``live_source`` keeps its rows under."""
    ends = [end for end in (store.coverage_end(live_source(device_name)), store.coverage_end(f"live:{device_name}"))
            if end]
    return max(ends) if ends else None   # store time text: compared as text, as the times


def _parse_store_time(text: str | None) -> float | None:
    return None if text is None else parse_utc(text).timestamp()


class _Threads:
    """Named threads whose exceptions are kept and end the whole run (``stop`` is set)."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.errors: list[tuple[str, BaseException]] = []

    def start(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except Exception as exc:  # handed to the main thread, which raises it
                if isinstance(exc, DatabaseReplaced):   # expected, and its one line says it all
                    log.error("%s thread stopped: %s", name, exc)
                else:
                    log.exception("%s thread failed", name)
                self.errors.append((name, exc))
                self.stop.set()
        thread = threading.Thread(target=guarded, name=f"edgemon-{name}", daemon=True)
        thread.start()
        return thread


def silence_of(state: CaptureState) -> str | None:
    """Why the microphone gives nothing, for the heartbeats ("no_audio"): the capture's state; None
    while audio comes, and once the capture has stopped because listen stops (Ctrl-C, --duration-s,
    systemctl stop): every clean stop wrote a "no_audio" beat, "no audio from the microphone
    (stopped)", just before its "stopping" one (a live trial)."""
    return None if state in (CaptureState.STARTING, CaptureState.RUNNING, CaptureState.STOPPED) else state.value


# (bundle id, counters) -> what writes the heartbeat rows (the service's ``ListenHeartbeats``)
BeatsFactory = Callable[..., WriterBeats]


def run_listen(config: ListenConfig, db_path: Path, analyzer: Analyzer,
               stop: threading.Event | None = None, heartbeats: BeatsFactory | None = None,
               on_writer_retry: Callable[[], None] | None = None) -> ListenSummary:
    """Listen on ``config.capture.device`` into the database at ``db_path`` until ``stop`` is set
    (or ``config.duration_s`` has passed). Raises DeviceNotFoundError when the device does not
    exist at start (later losses are waited out), ListenError when a thread fails.
    ``on_writer_retry``: told of each write the database refused and the writer will retry."""
    device = resolve_device(config.capture.device)
    source = live_source(device.name)
    blocks = BlockQueue(config.capture.queue_blocks)
    capture = Capture(config.capture, blocks, device)
    capture.check_settings()   # before the database: a rate the device never takes leaves none behind
    # Creates and migrates the database before the threads start; a damaged one is moved aside
    # (before, every write failed for good, and each was logged "lost" at the end).
    with open_or_recover(db_path) as store:
        store.check_writable()      # else the writer thread would hold every event, unstored
        previous_end = _parse_store_time(previous_end_of(store, device.name))
        store.record_bundle(analyzer.bundle.bundle_id, analyzer.bundle.manifest)   # names and reach for export
    stop = stop or threading.Event()
    writer = StoreWriter(db_path, on_retry=on_writer_retry)
    listener = Listener(config, analyzer, blocks, writer, source, previous_end, capture)
    drain, finish = threading.Event(), threading.Event()
    threads = _Threads(stop)
    log.info("listening on %s (%s, %d input channel(s), %g Hz) into %s as %s", device.name, device.hostapi,
             device.channels, capture.rate, db_path, source)
    beats = None if heartbeats is None else heartbeats(
        bundle_id=analyzer.bundle.bundle_id, counters=lambda: {"audio_s": listener.ledger.totals.get("analysed", 0.0)},
        hearing=lambda: silence_of(capture.state))
    writer_thread = threads.start("writer", lambda: writer.run(finish, beats))
    capture_thread = threads.start("capture", lambda: capture.run(stop))
    worker_thread = threads.start("analysis", lambda: listener.run(drain))
    try:
        deadline = None if config.duration_s is None else time.monotonic() + config.duration_s
        while not stop.wait(0.5):
            if deadline is not None and time.monotonic() >= deadline:
                break
    finally:
        stop.set()
        for thread, event, wait_s in ((capture_thread, drain, JOIN_TIMEOUT_S), (worker_thread, finish, DRAIN_TIMEOUT_S),
                                      (writer_thread, None, JOIN_TIMEOUT_S)):
            thread.join(wait_s)
            if thread.is_alive():
                threads.errors.append((thread.name, TimeoutError(f"still running {wait_s:.0f} s after stop")))
            if event is not None:
                event.set()
    summary = listener.summary()
    log.info("stopped: %s", summary)
    if threads.errors:
        name, exc = threads.errors[0]
        if isinstance(exc, DatabaseReplaced):   # its own line: the service restarts on a database anew
            raise exc
        raise ListenError(f"the {name} thread failed: {type(exc).__name__}: {exc}") from exc
    _say_lost_writes(writer, db_path)
    if capture.state is not CaptureState.STOPPED:
        raise ListenError(f"capture ended in state {capture.state.value}")
    return summary


def _say_lost_writes(writer: StoreWriter, db_path: Path) -> None:
    """ListenError when writes of what was heard (detections, coverage minutes) never reached the
    database: the summary counts what was found, and this run ended with less stored."""
    lost = writer.lost_at_exit + writer.refused
    if lost:
        raise ListenError(f"{lost} write(s) of detections or coverage could not be stored in {shown(db_path)} "
                          f"({writer.lost_at_exit} at shutdown, {writer.refused} with the queue full): see the "
                          f"errors above (a full disk?)")


def listen_main(config: ListenConfig, db_path: Path, models: Path | None = None, threads: int = 1,
                heartbeats: BeatsFactory | None = None,
                on_writer_retry: Callable[[], None] | None = None) -> ListenSummary:
    """``edgemon listen``: load the bundle, listen until SIGTERM or SIGINT (or ``duration_s``).
    The caller has checked the device (``daemon``: before the database and its lock exist)."""
    analyzer = make_analyzer(models, threads)
    with stop_on_signals("storing what was heard") as stop:
        return run_listen(config, db_path, analyzer, stop, heartbeats, on_writer_retry)
