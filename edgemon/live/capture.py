"""Microphone capture with sounddevice (PortAudio): a callback that only enqueues, and a
supervisor that keeps a stream open through device loss, stalls and audio-server restarts.

The PortAudio callback copies each block into a bounded queue and counts what it could not
enqueue; it never blocks, allocates beyond the copy, or logs. Everything else happens on other
threads. Capture health is an explicit state machine::

    starting -> running -> stalled | device_lost -> reopening --(backoff)--> starting
    (any) -> stopped

A stream is reopened with exponential backoff; every transition is logged, so a recorder that is
not listening says so. Blocks carry their stream's serial number, so the consumer sees where one
stream ends and the next begins (and accounts the gap).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import sounddevice as sd

from edgemon.backoff import Backoff
from edgemon.errors import EdgemonError

log = logging.getLogger(__name__)

# PortAudio's codes for settings a device will never take (paInvalidChannelCount,
# paInvalidSampleRate, paSampleFormatNotSupported): refused at start, never retried.
INVALID_SETTINGS = (-9998, -9997, -9994)


class AudioDeviceError(EdgemonError):
    """PortAudio cannot list or open audio devices."""


class DeviceNotFoundError(AudioDeviceError):
    """No input device matches the requested index or name."""


@dataclasses.dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    hostapi: str
    channels: int          # maximum input channels
    default_rate: float    # Hz, the device's default (native) sample rate


def list_input_devices() -> list[InputDevice]:
    """Every PortAudio device with at least one input channel."""
    try:
        apis = [api["name"] for api in sd.query_hostapis()]
        found = sd.query_devices()
    except sd.PortAudioError as exc:
        raise AudioDeviceError(f"cannot list audio devices: {exc}") from exc
    return [InputDevice(i, d["name"], apis[d["hostapi"]], d["max_input_channels"], d["default_samplerate"])
            for i, d in enumerate(found) if d["max_input_channels"] > 0]


def resolve_device(spec: str | int | None) -> InputDevice:
    """The input device for ``spec``: an index, a name (exact, else a unique case-insensitive
    substring), or None for the system's default input. Raises DeviceNotFoundError."""
    devices = list_input_devices()
    if not devices:
        raise DeviceNotFoundError("no audio input devices found (see `edgemon devices`)")
    if spec is None or spec == "":
        default = sd.default.device[0]
        if default is None or default < 0:
            default = sd.query_hostapis(sd.default.hostapi)["default_input_device"]
        match = [d for d in devices if d.index == default]
        if not match:
            raise DeviceNotFoundError("no default audio input device; name one with --device")
        return match[0]
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        match = [d for d in devices if d.index == int(text)]
        if not match:
            raise DeviceNotFoundError(f"no input device with index {text}; inputs: {_names(devices)}")
        return match[0]
    exact = [d for d in devices if d.name == text]
    if exact:
        return exact[0]
    match = [d for d in devices if text.lower() in d.name.lower()]
    if len(match) == 1:
        return match[0]
    if not match:
        raise DeviceNotFoundError(f"no input device matches {text!r}; inputs: {_names(devices)}")
    raise DeviceNotFoundError(f"{text!r} matches several input devices: {_names(match)}")


ALSA_CARD = re.compile(r" \(hw:\d+,\d+\)$")   # PortAudio's ALSA names end in the card and device numbers


def _names(devices: list[InputDevice]) -> str:
    return ", ".join(f"{d.index}: {d.name}" for d in devices)


def reinitialise_portaudio() -> None:
    """PortAudio enumerates devices once, at initialisation: a replugged microphone or a restarted
    sound server stays invisible (or opens but never delivers) until it is re-initialised. Only
    call this with no stream open. A failed initialisation leaves PortAudio terminated: the next
    call then only initialises (terminating it again failed for ever, a review)."""
    if sd._initialized > 0:
        sd._terminate()
    sd._initialize()


@dataclasses.dataclass(frozen=True)
class Block:
    """One callback's audio. ``samples`` is float32 ``[frames, channels]`` at ``rate`` Hz."""

    stream: int              # serial number of the stream opening that delivered it
    samples: np.ndarray
    rate: float
    received_s: float        # the capture clock (time.monotonic) when the callback ran
    latency_s: float         # PortAudio: currentTime - inputBufferAdcTime (nan when unknown)
    overflow: bool           # PortAudio reported an input overflow before this block
    dropped_frames: int      # frames not enqueued (queue full) since this stream's previous block
    dropped_blocks: int


class BlockQueue:
    """The bounded queue between the audio callback and the analysis thread, with its counters.

    ``callback(stream, rate)`` gives the function PortAudio calls. When the queue is full the
    block is dropped and counted; the next block that gets through carries the count, so the
    consumer knows exactly how many frames are missing before it.
    """

    def __init__(self, maxsize: int, clock: Callable[[], float] = time.monotonic):
        self.queue: queue.Queue[Block] = queue.Queue(maxsize=maxsize)
        self.clock = clock
        self.callbacks = 0
        self.overflows = 0
        self.dropped_blocks = 0
        self.dropped_frames = 0
        self.last_callback_s: float | None = None
        self._pending_frames = 0
        self._pending_blocks = 0
        self._stream = -1

    def callback(self, stream: int, rate: float) -> Callable:
        def on_audio(indata: np.ndarray, frames: int, time_info, status: sd.CallbackFlags) -> None:
            now = self.clock()
            try:
                latency = float(time_info.currentTime - time_info.inputBufferAdcTime)
            except AttributeError:  # a plain tuple or None from a test driver
                latency = float("nan")
            self.put(stream, rate, indata.copy(), now, latency, bool(status.input_overflow))
        return on_audio

    def put(self, stream: int, rate: float, samples: np.ndarray, now: float, latency: float,
            overflow: bool) -> bool:
        """Enqueue one block without waiting; False (and counted) when the queue is full."""
        if stream != self._stream:   # drops before a new stream belong to the old one's gap
            self._stream, self._pending_frames, self._pending_blocks = stream, 0, 0
        self.callbacks += 1
        self.last_callback_s = now
        self.overflows += overflow
        block = Block(stream, samples, rate, now, latency, overflow, self._pending_frames, self._pending_blocks)
        try:
            self.queue.put_nowait(block)
        except queue.Full:
            self.dropped_blocks += 1
            self.dropped_frames += len(samples)
            self._pending_frames += len(samples)
            self._pending_blocks += 1
            return False
        self._pending_frames = self._pending_blocks = 0
        return True

    def take_undelivered(self) -> tuple[int, int, int]:
        """(stream, frames, blocks) dropped after the last block that got through, which no later
        block will report. Only once no callback can run any more (the stream is closed)."""
        taken = (self._stream, self._pending_frames, self._pending_blocks)
        self._pending_frames = self._pending_blocks = 0
        return taken


class CaptureState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STALLED = "stalled"
    DEVICE_LOST = "device_lost"
    REOPENING = "reopening"
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True)
class CaptureConfig:
    device: str | None = None        # index or name substring; None: the default input
    sample_rate: float | None = None  # Hz; None: the device's default (native) rate
    channels: int = 1                # mixed to mono by the consumer
    block_s: float = 0.1             # seconds per callback
    queue_s: float = 30.0            # audio the queue holds before blocks are dropped
    stall_s: float = 5.0             # no callback this long: the stream is stalled
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    healthy_s: float = 30.0          # running this long resets the backoff
    poll_s: float = 0.25             # supervisor's check interval (sleeps, never spins)

    @property
    def queue_blocks(self) -> int:
        return max(2, int(round(self.queue_s / self.block_s)))


class Capture:
    """Keeps an input stream open on the configured device until ``stop`` is set.

    ``run(stop)`` is the supervisor loop (its own thread). ``device`` is the device resolved at
    start; a reopen looks it up again by name, since indices move when devices come and go.
    """

    def __init__(self, config: CaptureConfig, blocks: BlockQueue, device: InputDevice,
                 open_stream: Callable[..., sd.InputStream] = sd.InputStream,
                 resolve: Callable[[str], InputDevice] = resolve_device,
                 reinitialise: Callable[[], None] = reinitialise_portaudio,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.blocks = blocks
        self.device = device
        self.state = CaptureState.STARTING
        self.stream_serial = 0
        self.rate = float(config.sample_rate or device.default_rate)
        self.opens = 0
        self.attempts = 0
        self.failures = 0
        self.transitions: deque[tuple[float, CaptureState, str]] = deque(maxlen=1000)  # recent, for status
        self._open_stream = open_stream
        self._resolve = resolve
        self._reinitialise = reinitialise
        self._clock = clock
        self._stream: sd.InputStream | None = None
        self._finished = threading.Event()
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)

    def _set(self, state: CaptureState, why: str = "") -> None:
        level = logging.INFO if state in (CaptureState.STARTING, CaptureState.RUNNING,
                                          CaptureState.STOPPED) else logging.WARNING
        log.log(level, "capture %s: %s -> %s%s", self.device.name, self.state.value, state.value,
                f" ({why})" if why else "")
        self.state = state
        self.transitions.append((self._clock(), state, why))

    def check_settings(self) -> None:
        """Refuse at start what no reopen can mend: a sample rate, channel count or format the
        device does not take. Retried, it would record nothing for ever, as if the device were lost."""
        try:
            sd.check_input_settings(device=self.device.index, samplerate=self.rate, channels=self.config.channels,
                                    dtype="float32")
        except sd.PortAudioError as exc:
            if len(exc.args) > 1 and exc.args[1] in INVALID_SETTINGS:
                raise AudioDeviceError(f"{self.device.name} does not take {self.rate:g} Hz, {self.config.channels} "
                                       f"channel(s): {exc.args[0]} (`edgemon devices` lists what each device "
                                       f"takes)") from None
        except ValueError as exc:
            raise AudioDeviceError(f"{self.device.name}: {exc}") from None

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                error = self._open()
                if error is None:
                    self._watch(stop)
                    self._close()
                if not stop.is_set():
                    self._wait_backoff(stop, error)
        finally:
            self._close()
            self._set(CaptureState.STOPPED)

    def _open(self) -> str | None:
        """Open and start a stream; the reason when that fails."""
        self.attempts += 1
        try:
            if self.attempts > 1:
                # Also after a stall: a stream re-opened on a stale PortAudio can start and never
                # call back (seen with a restarted PulseAudio).
                self._reinitialise()
                self.device = self._find_again()
            self.rate = float(self.config.sample_rate or self.device.default_rate)
            self.stream_serial += 1
            self._finished.clear()
            stream = self._open_stream(
                device=self.device.index, samplerate=self.rate, channels=self.config.channels,
                dtype="float32", blocksize=max(1, int(round(self.rate * self.config.block_s))),
                latency="high", callback=self.blocks.callback(self.stream_serial, self.rate),
                finished_callback=self._finished.set)
            stream.start()
        except (sd.PortAudioError, AudioDeviceError, ValueError, OSError) as exc:
            self.failures += 1
            return f"cannot open {self.device.name}: {exc}"
        self._stream = stream
        self.opens += 1
        log.info("capture %s: stream %d opened at %g Hz, latency %.3f s", self.device.name,
                 self.stream_serial, self.rate, stream.latency)
        return None

    def _find_again(self) -> InputDevice:
        """The device by the name it had; else by that name without ALSA's card number: a USB
        microphone replugged while its old card was still held comes back as the next card
        ("... (hw:1,0)" becomes "... (hw:2,0)"), and was looked for under the old number for ever
        (a review)."""
        try:
            return self._resolve(self.device.name)
        except DeviceNotFoundError:
            without_card = ALSA_CARD.sub("", self.device.name)
            if without_card == self.device.name:
                raise
            return self._resolve(without_card)

    def _watch(self, stop: threading.Event) -> None:
        """Until the stream fails or ``stop``: watch for callbacks; returns with the new state set."""
        opened = self._clock()
        running_since = None
        while not stop.wait(self.config.poll_s):
            now = self._clock()
            last = self.blocks.last_callback_s
            heard = last is not None and last >= opened
            try:
                active = self._stream is None or self._stream.active
            except sd.PortAudioError:
                active = False
            if self._finished.is_set() or not active:
                self._set(CaptureState.DEVICE_LOST, "the stream ended: device gone or audio server stopped")
                return
            if now - (last if heard else opened) > self.config.stall_s:
                self._set(CaptureState.STALLED, f"no audio for {now - (last if heard else opened):.1f} s")
                return
            if heard and self.state is not CaptureState.RUNNING:
                self._set(CaptureState.RUNNING)
                running_since = now
            if running_since is not None and now - running_since >= self.config.healthy_s:
                self._backoff.reset()
                running_since = None

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(ignore_errors=True)
            except Exception as exc:  # closing a dead stream must not end the supervisor
                log.warning("capture %s: closing the stream failed: %s", self.device.name, exc)

    def _wait_backoff(self, stop: threading.Event, why: str | None) -> None:
        delay = self._backoff.next()
        self._set(CaptureState.REOPENING, f"{why + '; ' if why else ''}next attempt in {delay:.1f} s")
        if not stop.wait(delay):
            self._set(CaptureState.STARTING)
