"""Analysing one recording in a child process, so that a file which kills its analysis (memory
exhausted, a crash in a decoder) kills only the child and the daemon can blame the file.

The daemon uses it for a suspect file only: one that was in progress when an earlier run died,
or whose analysis in a child died before. A death of the daemon itself proves nothing about the
file (a recorder that loses power every night dies in the middle of some file), but a child that
dies while the daemon lives does. The child is marked as the out-of-memory killer's first choice, dies with its parent,
ignores Ctrl-C (the daemon stops after the current file), and sends back the ``Analysis`` pickled
on stdout; an error is sent back as text. It starts as ``_CHILD``, which binds it to the daemon
before the second of imports, so a daemon killed meanwhile leaves no orphan working on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import soundfile

from edgemon.analysis import audio
from edgemon.analysis.analyzer import Analysis, Analyzer
from edgemon.analysis.bundle import load_bundle
from edgemon.errors import EdgemonError
from edgemon.files.preroll import PreRoll, analyse_after
from edgemon.files.recordings import audio_duration_s

_FAILED = 3      # exit status of a child that caught an error and reported it
_PROGRESS = b"\x06"  # written to stderr for each decoded block (ASCII ACK: never in an error text)
_CHILD = """\
import ctypes, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C stops the daemon after this file, not the child
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the daemon
except (OSError, AttributeError):               # not Linux: an orphan finishes its one file
    pass
if os.getppid() != int(sys.argv[1]):             # the daemon died before the line above
    os._exit(1)
from edgemon.files.isolate import main
sys.exit(main([os.fsencode(a) for a in sys.argv[2:]]))
"""


class AnalysisDied(EdgemonError):
    """The child analysing a file was killed (a signal other than a stop request) or crashed."""


class AnalysisTimedOut(AnalysisDied):
    """The child gave no result within its time limit (hung: a decoder in a loop, a stalled card)
    and was killed; counted against the file like a crash."""


class AnalysisStopped(EdgemonError):
    """The child was stopped by SIGTERM or SIGINT (the unit is stopping): not the file's fault."""


class AnalysisFailed(EdgemonError):
    """The child caught an ordinary error in the file and reported it."""


@dataclasses.dataclass(frozen=True)
class Isolated:
    """How to analyse a file in a child: the bundle, onnxruntime threads and decode block (s)."""

    bundle_path: Path
    threads: int = 1
    block_s: float = 10.0
    # A child that hangs is killed after ``timeout_per_audio_s`` seconds per second of audio the
    # file's header declares, and never before ``timeout_floor_s`` (start-up, model load, a slow
    # card). The ensemble runs at ~200x real time here and well above 1x on a Raspberry Pi, so
    # 1 s per audio second leaves a slow device a wide margin and still ends a hang.
    timeout_floor_s: float = 300.0
    timeout_per_audio_s: float = 1.0

    def timeout_s(self, path: Path) -> tuple[float, float | None]:
        """(the time limit for analysing ``path`` in s, the audio seconds its header declares;
        None when it cannot be read: the floor then applies)."""
        try:   # only a regular file: opening a FIFO would block the daemon itself
            regular = stat.S_ISREG(os.stat(path).st_mode)
            # The header read by hand first: it knows the length of a WAV never finalised (data
            # size 0), which libsndfile calls 0 s (a long one was given the 300 s floor).
            declared = (audio_duration_s(path) or soundfile.info(os.fsencode(path)).duration) if regular else None
        except (OSError, RuntimeError, ValueError):   # the child reports the file's error itself
            declared = None
        return max(self.timeout_floor_s, self.timeout_per_audio_s * (declared or 0.0)), declared

    def analyse(self, path: Path, on_block: Callable[[], object] = lambda: None,
                preroll: PreRoll | None = None) -> Analysis:
        """``path`` analysed in a child process, after ``preroll`` when given (``files.preroll``);
        ``on_block`` is called for each block the child decodes (the daemon's progress mark, so
        its watchdog sees a long file move). Raises
        ``AnalysisFailed`` (the file's error), ``AnalysisDied`` (the child was killed or
        crashed), ``AnalysisTimedOut`` (it hung past ``timeout_s`` and was killed) or
        ``AnalysisStopped``."""
        limit_s, declared = self.timeout_s(path)
        command = [sys.executable, "-c", _CHILD, str(os.getpid()), os.fsencode(self.bundle_path),
                   str(self.threads), repr(self.block_s), os.fsencode(path)]
        command += [os.fsencode(preroll.path), str(preroll.frames), json.dumps(preroll.stored)] if preroll else []
        # The daemon's environment (OPENBLAS_NUM_THREADS too): the same arithmetic as in-process.
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
            collected = _collect(child, on_block, time.monotonic() + limit_s)
            if collected is None:
                child.kill()
                child.wait()
                audio_s = "an unreadable header" if declared is None else f"{declared:.0f} s of audio"
                raise AnalysisTimedOut(f"the analysis process hung: no result within {limit_s:.0f} s (the "
                                       f"limit for {audio_s}); killed")
            out, err = collected
        if child.returncode == 0:
            return pickle.loads(out)
        if child.returncode == _FAILED:
            raise AnalysisFailed(out.decode("utf-8", "backslashreplace").strip())
        if -child.returncode in (signal.SIGTERM, signal.SIGINT):
            raise AnalysisStopped(f"analysis stopped by {_signal_name(-child.returncode)}")
        how = (f"killed by {_signal_name(-child.returncode)}" if child.returncode < 0
               else f"exited with status {child.returncode}")
        last = err.decode("utf-8", "backslashreplace").strip().splitlines()[-1:] or [""]
        raise AnalysisDied(f"the analysis process was {how} (out of memory, or a crash in a decoder)"
                           + (f": {last[0]}" if last[0] else ""))


def _collect(child: subprocess.Popen, on_block: Callable[[], object],
             deadline: float) -> tuple[bytes, bytes] | None:
    """Read the child's stdout (the result) and stderr (a progress byte per block, then any
    error text) as they come, so neither pipe fills; returns both once the child has exited,
    or None when it has not by ``deadline`` (monotonic s)."""
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ, out)
        selector.register(child.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for key, _ in selector.select(timeout=left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                if key.data is err:
                    for _ in range(chunk.count(_PROGRESS)):
                        on_block()
                    chunk = chunk.replace(_PROGRESS, b"")
                key.data.extend(chunk)
    try:   # both pipes closed: the child is exiting, unless it closed them and hangs on
        child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None
    return bytes(out), bytes(err)


def _blocks_with_progress(path: Path, block_s: float, sample_rate: int) -> audio.Blocks:
    return audio.iter_blocks(path, block_s, sample_rate, on_block=lambda: os.write(2, _PROGRESS))


def main(argv: list[bytes]) -> int:
    """The child's work, once ``_CHILD`` has bound it to the daemon: analyse one file."""
    bundle_path, threads, block_s, path, *before = argv
    stored = json.loads(before[2]) if before else None
    preroll = PreRoll(Path(os.fsdecode(before[0])), int(before[1]), stored and tuple(stored)) if before else None
    try:  # the out-of-memory killer's first choice: a file that exhausts memory kills the child
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    try:
        analyzer = Analyzer(load_bundle(Path(os.fsdecode(bundle_path))), threads=int(threads))
        analysis = analyse_after(analyzer, _blocks_with_progress(Path(os.fsdecode(path)), float(block_s),
                                                                 analyzer.bundle.frontend.sample_rate), preroll)
    except Exception as exc:  # the file's error, reported to the daemon as text
        sys.stdout.buffer.write(f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace"))
        return _FAILED
    sys.stdout.buffer.write(pickle.dumps(analysis))
    return 0


def _signal_name(number: int) -> str:
    """SIGKILL, …; real-time signals (34-64) have no ``signal.Signals`` member."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
