"""Shared fixtures: the real Borneo data (skipped outside this workplace) and small real audio."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parents[1]
BORNEO = ROOT.parent / "shared" / "data" / "borneo"

# Name prefixes of non-daemon threads that libraries start once and keep for the life of the
# process: not a test's leak. Empty, as measured on the whole suite (2026-12): torch and onnxruntime
# run their pools in native threads, invisible to ``threading``; watchdog's observer and emitters
# are daemon threads, which this guard does not count; optuna joins its heartbeat thread after each
# trial.
LIBRARY_THREADS: tuple[str, ...] = ()
THREAD_GRACE_S = 5.0   # a thread that is being joined when the test returns gets this long to end


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a non-daemon thread running, as watchdog's suite does: such a
    thread outlives the test, keeps the process alive at exit and changes the next test's timing."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE_S
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
                  and not t.name.startswith(LIBRARY_THREADS)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"the test left non-daemon thread(s) running: {', '.join(t.name for t in leaked)}"


@pytest.fixture(scope="session")
def borneo_dir() -> Path:
    """The Borneo five-class set at ../shared/data/borneo (read-only)."""
    if not (BORNEO / "lab" / "devel.csv").is_file():
        pytest.skip(f"needs the Borneo data set at {BORNEO} (see README: Data)")
    return BORNEO


TINY_LABELS = ("background", "call_high", "call_low")


def tone(freq: float, seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A tone in faint noise: float32 mono in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.3 * np.sin(2 * np.pi * freq * t) if freq else 0.0
    return (signal + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def hoots(seconds: float, freq: float = 500.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Half-second hoots at ``freq`` every second in faint noise: a sound the embedded bundle
    calls a helmeted hornbill (a steady tone it calls nothing: its members centre each band)."""
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.3 * np.sin(2 * np.pi * freq * t) * ((t % 1.0) < 0.5)
    return (signal + 0.01 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


def make_tiny_dataset(root: Path) -> Path:
    """A ComParE-layout data set of real FLAC files: background noise, a 3 kHz and a 500 Hz tone."""
    (root / "audio").mkdir()
    (root / "lab").mkdir()
    freqs = {"background": 0, "call_high": 3000, "call_low": 500}
    seed = 0
    for split, n in (("train", 6), ("devel", 3), ("test", 3)):
        rows = ["filename,label,recorder,source_recording,duration_s,sample_rate"]
        for label, freq in freqs.items():
            for i in range(n):
                seed += 1
                name = f"{label}_{split}_{i}.flac"
                seconds = 1.0 + 0.25 * i
                soundfile.write(root / "audio" / name, tone(freq, seconds, seed=seed), 16000)
                rows.append(f"{name},{label},S{i % 2},S{i % 2}_x,{seconds},16000")
        (root / "lab" / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_dataset_with_pool(tiny_dataset, tmp_path_factory) -> Path:
    """The tiny set plus a ``pool.csv`` of train clips relabelled as pool clips (one per recorder and class)."""
    root = tmp_path_factory.mktemp("pooled") / "data"
    shutil.copytree(tiny_dataset, root)
    rows = (root / "lab" / "train.csv").read_text().splitlines()
    pool = [rows[0]] + [r for r in rows[1:] if r.split(",")[0].endswith(("_0.flac", "_1.flac"))]
    (root / "lab" / "pool.csv").write_text("\n".join(pool) + "\n")
    return root


def write_manifest(bundle_dir: Path, manifest: dict) -> None:
    """A bundle's manifest as a test edited it, under the id its decisions make: an edited bundle
    keeping its old id is refused when read (``edgemon.analysis.bundle_identity``)."""
    from edgemon.analysis.bundle_identity import ID_FROM, with_identity

    if isinstance(manifest, dict) and manifest.get("id_from") == ID_FROM and manifest.get("bundle_id"):
        manifest = with_identity(manifest, Path(bundle_dir).name)   # not one a test broke on purpose
    (Path(bundle_dir) / "manifest.json").write_text(json.dumps(manifest))
