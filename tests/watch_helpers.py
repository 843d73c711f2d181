"""Helpers for the watch tests: running a Watcher in-process and writing recorder-like files."""

from __future__ import annotations

import copy
import functools
import sqlite3
import struct
import threading
from contextlib import closing
from pathlib import Path

import numpy as np
import soundfile

from edgemon.analysis.analyzer import Analyzer
from edgemon.analysis.bundle import default_bundle_path, load_bundle
from edgemon.files.watcher import WatchConfig, Watcher
from edgemon.storage.store import Store

@functools.cache
def _loaded() -> Analyzer:
    return Analyzer(load_bundle(default_bundle_path()))


def analyzer() -> Analyzer:
    """The embedded bundle's analyzer. Its ONNX sessions load once per test session; each caller
    gets its own copy, so a test that replaces an attribute (its merger, its batch size) cannot
    change what later tests run (one did: every later test lost the operating point)."""
    return copy.copy(_loaded())


def fast_config(root: Path, **overrides) -> WatchConfig:
    settings = dict(root=root, settle_s=0.2, rescan_s=0.3, incomplete_grace_s=1.0, retry_s=0.1,
                    until_idle=True, block_s=5.0)
    settings.update(overrides)
    return WatchConfig(**settings)


def watch_until_idle(root: Path, db: Path, timeout: float = 120, stop_after_s: float | None = None,
                     **overrides) -> Watcher:
    """Run a watcher over ``root`` on its own thread (which owns the Store) until it is idle, or
    for ``stop_after_s`` seconds."""
    result: dict = {}
    stop = threading.Event()
    if stop_after_s is not None:
        threading.Timer(stop_after_s, stop.set).start()

    def run() -> None:
        try:
            with Store(db) as store:
                watcher = Watcher(fast_config(root, **overrides), analyzer(), store)
                watcher.run(stop)
                result["watcher"] = watcher
        except BaseException as exc:  # handed to the test thread below
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "watcher did not become idle"
    if "error" in result:
        raise result["error"]
    return result["watcher"]


def query(db: Path, sql: str, params=()) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def files_done(db: Path) -> int:
    """Files the daemon has finished, read-only; 0 while it has not yet created the database or
    its schema (the file appears before its tables do)."""
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT COUNT(*) FROM files WHERE state = 'done'").fetchone()[0]
    except sqlite3.OperationalError:  # no such table yet, or locked mid-schema
        return 0


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, rate, subtype=subtype, format="WAV")
    return path


def unfinalised_header(path: Path) -> None:
    """Zero the RIFF and data sizes, as an AudioMoth leaves them until it closes the file."""
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 0)
    at = data.find(b"data")
    data[at + 4:at + 8] = struct.pack("<I", 0)
    path.write_bytes(bytes(data))


def noise(seconds: float, rate: int = 16000, seed: int = 0, level: float = 0.01) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


# Fault injection for daemons run as real processes: a sitecustomize module, found first on the
# child's PYTHONPATH, wraps edgemon.analysis.audio.iter_blocks and open_decoder so that reading a
# file whose name holds EDGEMON_TEST_DIE_ON dies by SIGKILL: the daemon itself when it reads the
# file, or, read in an isolated child, the child ("a file that kills its analysis"). With
# EDGEMON_TEST_CUTS=COUNTER:N the first N reads instead kill the daemon as a power cut would (the
# child kills its parent and then dies with it), whichever process reads the file.
SITECUSTOMIZE = '''
import os, signal, sys
_on = os.environ.get("EDGEMON_TEST_DIE_ON")
if _on:
    import edgemon.analysis.audio as _audio
    _real = _audio.iter_blocks

    def _cut_power():
        counter, limit = os.environ["EDGEMON_TEST_CUTS"].rsplit(":", 1)
        done = 0
        if os.path.exists(counter):
            with open(counter) as f:
                done = int(f.read() or 0)
        if done >= int(limit):
            return False
        with open(counter, "w") as f:
            f.write(str(done + 1))
        if "edgemon.files.watcher" not in sys.modules:   # the isolated child: the daemon loses power too
            os.kill(os.getppid(), signal.SIGKILL)
        return True

    def iter_blocks(path, *args, **kwargs):
        if _on in os.fsdecode(path) and ("EDGEMON_TEST_CUTS" not in os.environ or _cut_power()):
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(path, *args, **kwargs)

    _audio.iter_blocks = iter_blocks
    _real_open = _audio.open_decoder

    def open_decoder(path, *args, **kwargs):   # the other reader of a file's audio (a pre-roll's tail)
        if _on in os.fsdecode(path) and ("EDGEMON_TEST_CUTS" not in os.environ or _cut_power()):
            os.kill(os.getpid(), signal.SIGKILL)
        return _real_open(path, *args, **kwargs)

    _audio.open_decoder = open_decoder
'''


def fault_env(tmp: Path, **variables: str) -> dict:
    """The environment of a daemon run with the fault injection above (see SITECUSTOMIZE)."""
    import os

    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **variables)


def damage_table(db: Path, table: str) -> None:
    """Overwrite ``table``'s root page, as a failing SD card does: the schema still reads, and
    ``quick_check`` and every query of that table say "database disk image is malformed"."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", [table]).fetchone()
    with db.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xde\xad" * (page_size // 2))
