"""Soak: `edgemon watch` for a long run at a high input rate, as the service runs it.

A writer drops recorder-like files (AudioMoth names, tones in noise, ``--file-s`` seconds each)
into the watched directory at ``--rate`` times real time; every ``--sample-s`` seconds the
daemon's resident memory, its bytes written (``/proc/PID/io``: ``write_bytes`` reached the
block layer, ``wchar`` passed through write()), the database and WAL sizes and the files done are
sampled. Prints the samples and a summary: resident-memory growth, bytes written per hour of audio
(SD-card wear), WAL size over time, and whether the daemon kept up.

    .venv/bin/python bench/soak.py --minutes 10 --rate 120
    .venv/bin/python bench/soak.py --minutes 2 --rate 0 --backlog 10000 --file-s 0.1   # a backlog
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


def recording_bytes(seconds: float, seed: int) -> bytes:
    """A 16 kHz PCM WAV: faint noise with a tone burst in the middle (so some files have detections)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    x = 0.01 * rng.standard_normal(n)
    t = np.arange(n) / 16000
    burst = (t > seconds * 0.3) & (t < seconds * 0.3 + min(3.0, seconds / 2))
    x += burst * 0.3 * np.sin(2 * np.pi * rng.choice([500, 1000, 3000]) * t)
    buffer = io.BytesIO()
    soundfile.write(buffer, x.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def proc_stats(pid: int) -> dict:
    stats = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    stats["rss_mb"] = int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                key, value = line.split(":")
                stats[key] = int(value)
    except OSError:
        pass
    return stats


def ledger(db: Path) -> tuple[int, float]:
    """(files done, seconds of audio done), read-only; (0, 0) while the database is being created."""
    try:
        conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*), COALESCE(SUM(duration_s), 0) FROM files WHERE state = 'done'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0, 0.0


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument("--rate", type=float, default=120.0, help="input rate, times real time (0: none)")
    parser.add_argument("--file-s", type=float, default=60.0, help="seconds of audio per file")
    parser.add_argument("--backlog", type=int, default=0, help="files present before the daemon starts")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--dir", type=Path, help="working directory (default: a temporary one, removed)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgemon-soak-") as tmp:
        work = args.dir or Path(tmp)
        root, db = work / "rec", work / "soak.db"
        root.mkdir(parents=True, exist_ok=True)
        variants = [recording_bytes(args.file_s, seed) for seed in range(8)]
        start_name = datetime(2024, 1, 1)
        for i in range(args.backlog):
            folder = root / f"backlog{i // 1000:03d}"
            folder.mkdir(exist_ok=True)
            # each its own recording: the first sample numbers it (same bytes and start would be copies)
            variant = variants[i % len(variants)]
            at = variant.find(b"data") + 8
            (folder / f"{i:06d}.WAV").write_bytes(variant[:at] + (i % 65536).to_bytes(2, "little") + variant[at + 2:])
        (work / "empty.toml").write_text("")
        env = dict(os.environ, EDGEMON_HEARTBEAT_S="60")
        env.setdefault("MALLOC_ARENA_MAX", "2")           # as deploy/edgemon.service runs it
        log = open(work / "daemon.log", "w")
        daemon = subprocess.Popen([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db),
                                   "--settle-s", "1", "--config", str(work / "empty.toml")],
                                  cwd=REPO, env=env, stdout=log, stderr=log)
        print(f"soak: edgemon watch (pid {daemon.pid}), {args.minutes:g} min, input {args.rate:g}x real time in "
              f"{args.file_s:g} s files, backlog {args.backlog}, MALLOC_ARENA_MAX={env['MALLOC_ARENA_MAX']}; "
              f"working in {work}")
        print(f"{'t_s':>6} {'written':>7} {'done':>7} {'audio_h':>8} {'rss_mb':>7} {'wal_mb':>7} {'db_mb':>7} "
              f"{'write_mb':>9} {'wchar_mb':>9}")
        interval = args.file_s / args.rate if args.rate > 0 else float("inf")
        started = time.monotonic()
        next_file, next_sample, written = started, started, 0
        samples = []
        try:
            while time.monotonic() - started < args.minutes * 60 and daemon.poll() is None:
                now = time.monotonic()
                while now >= next_file:
                    name = (start_name + timedelta(seconds=written * args.file_s)).strftime("%Y%m%d_%H%M%S.WAV")
                    part = root / f".{name}.part"
                    part.write_bytes(variants[written % len(variants)])
                    part.rename(root / name)           # the recorder closes the file
                    written += 1
                    next_file += interval
                if now >= next_sample:
                    done, audio_s = ledger(db)
                    stats = proc_stats(daemon.pid)
                    row = dict(t=now - started, written=written, done=done, audio_h=audio_s / 3600,
                               rss=stats.get("rss_mb", float("nan")), wal=size(Path(f"{db}-wal")) / MB,
                               db=size(db) / MB, write=stats.get("write_bytes", 0) / MB,
                               wchar=stats.get("wchar", 0) / MB)
                    samples.append(row)
                    print(f"{row['t']:6.0f} {written:7d} {done:7d} {row['audio_h']:8.2f} {row['rss']:7.1f} "
                          f"{row['wal']:7.2f} {row['db']:7.2f} {row['write']:9.1f} {row['wchar']:9.1f}", flush=True)
                    next_sample += args.sample_s
                time.sleep(min(0.05, max(0.0, min(next_file, next_sample) - time.monotonic())))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
            log.close()
        if daemon.returncode not in (0, -signal.SIGTERM):
            print((work / "daemon.log").read_text()[-3000:])
            raise SystemExit(f"daemon exited with {daemon.returncode}")
        summarise(samples, args, written)


def summarise(samples: list[dict], args, written: int) -> None:
    if len(samples) < 4:
        raise SystemExit("too short a run to summarise")
    warm = samples[1]                      # the model loaded and the first files through
    steady = samples[len(samples) // 3]    # caches, WAL index and allocator settled
    last = samples[-1]
    audio_h = last["audio_h"] - warm["audio_h"]
    steady_h = last["audio_h"] - steady["audio_h"]
    print("\nsummary")
    print(f"  files written {written}, done {last['done']}; audio analysed {last['audio_h']:.2f} h in "
          f"{last['t'] / 60:.1f} min ({last['audio_h'] * 3600 / max(last['t'], 1e-9):.0f}x real time); "
          f"behind at the last sample: {last['written'] + args.backlog - last['done']} file(s)")
    print(f"  resident memory: {warm['rss']:.1f} MB after warm-up, {steady['rss']:.1f} MB at a third of the run, "
          f"{last['rss']:.1f} MB at the end, max {max(s['rss'] for s in samples):.1f} MB; growth over the last "
          f"two thirds {last['rss'] - steady['rss']:+.1f} MB ({(last['rss'] - steady['rss']) / max(steady_h, 1e-9):+.2f} "
          f"MB per hour of audio)")
    if audio_h > 0:
        print(f"  bytes written per hour of audio: {(last['write'] - warm['write']) / audio_h:.2f} MB to the block "
              f"layer (write_bytes), {(last['wchar'] - warm['wchar']) / audio_h:.2f} MB through write() (wchar)")
        print(f"  database growth per hour of audio: "
              f"{(last['db'] + last['wal'] - warm['db'] - warm['wal']) / audio_h:.3f} MB (file + WAL)")
    wal = [s["wal"] for s in samples]
    print(f"  WAL size over time: min {min(wal):.2f} MB, max {max(wal):.2f} MB, end {wal[-1]:.2f} MB "
          f"(SQLite checkpoints at 1000 pages, about 4 MB, and reuses the file)")


if __name__ == "__main__":
    main()
