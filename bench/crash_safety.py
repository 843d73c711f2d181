"""Crash safety: N SIGKILLs at random moments over a backlog, then lost / duplicated / integrity
counts and the good files quarantined (there must be none: a daemon killed for reasons that are
not the file's, a power cut every night, never blames the file it was working on).

A backlog of real recordings (FLAC and WAV of Borneo clips laid end to end, or hoots in noise
when the data set is absent) is watched by ``edgemon watch --until-idle`` as a separate process,
which is killed with SIGKILL after a random 0.2-4 s (during start-up, database creation, decoding,
analysis, commits, an isolated child's analysis), restarted, killed again. When a round's backlog
is done without a kill, its database is compared with a reference run left alone; the next round
starts on a fresh database, until N kills have landed. Every file in the backlog is good, so every
quarantined file counts against edgemon.

    nice .venv/bin/python bench/crash_safety.py --kills 100
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import soundfile

REPO = Path(__file__).resolve().parents[1]
BORNEO = REPO.parent / "shared" / "data" / "borneo"
DETECTIONS = "SELECT source, label, start_s, end_s, confidence FROM detections"


def build_backlog(root: Path, files: int, seed: int) -> str:
    """``files`` recordings under ``root`` (AudioMoth names, half FLAC, half 16-bit WAV)."""
    rng = np.random.default_rng(seed)
    clips = []
    if (BORNEO / "lab" / "devel.csv").is_file():
        with open(BORNEO / "lab" / "devel.csv") as f:
            clips = [BORNEO / "audio" / r["filename"] for r in csv.DictReader(f)]
    for i in range(files):
        if clips:
            parts = [soundfile.read(clips[j], dtype="float32")[0] for j in rng.choice(len(clips), 6, replace=False)]
            audio = np.concatenate(parts)
        else:
            t = np.arange(30 * 16000) / 16000
            audio = (0.3 * np.sin(2 * np.pi * 500 * t) * ((t % 1.0) < 0.5)
                     + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        name = root / f"day{i // 10}" / f"201803{10 + i // 10}_{6 + i % 10:02d}0000"
        name.parent.mkdir(parents=True, exist_ok=True)
        if i % 2:
            soundfile.write(name.with_suffix(".flac"), audio, 16000)
        else:
            soundfile.write(name.with_suffix(".WAV"), audio, 16000, subtype="PCM_16")
    return "Borneo devel clips" if clips else "synthetic hoots in noise"


def daemon(root: Path, db: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgemon", "watch", str(root), "--db", str(db), "--until-idle",
                             "--settle-s", "0", "--rescan-s", "0.2", "--retry-s", "0.5"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def query(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)) as conn:
        return conn.execute(sql).fetchall()


def orphans(marker: str) -> int:
    """Analysis children still alive after their daemon was killed (they must die with it)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        count += b"from edgemon.files.isolate import main" in cmdline and marker.encode() in cmdline
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--files", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="crash_safety_") as tmp:
        tmp = Path(tmp)
        root = tmp / "rec"
        what = build_backlog(root, args.files, args.seed)
        started = time.monotonic()
        reference_run = daemon(root, tmp / "reference.db")
        assert reference_run.wait() == 0, "the reference run failed"
        reference_s = time.monotonic() - started
        reference = sorted(query(tmp / "reference.db", DETECTIONS))
        print(f"backlog: {args.files} files ({what}), {len(reference)} detections, reference run {reference_s:.1f} s",
              flush=True)
        kills = rounds = lost = duplicated = changed = integrity_failures = quarantined = left_undone = 0
        orphaned = max_in_row = 0   # max_in_row: kills in a row with one file in progress
        kill_moments = []
        while kills < args.kills:
            rounds += 1
            db = tmp / f"round{rounds}.db"
            while True:
                run = daemon(root, db)
                wait_s = float(rng.uniform(0.2, 4.0))
                try:
                    run.wait(wait_s)
                except subprocess.TimeoutExpired:
                    run.send_signal(signal.SIGKILL)
                    run.wait()
                    kills += 1
                    kill_moments.append(wait_s)
                    time.sleep(0.3)   # a child starting up needs a moment to see its parent gone
                    orphaned += orphans(str(tmp))
                    try:
                        open_rows = query(db, "SELECT interrupted FROM in_progress")
                        max_in_row = max([max_in_row] + [r[0] + 1 for r in open_rows])
                    except sqlite3.Error:  # killed before its schema existed
                        pass
                    if kills < args.kills:
                        continue
                    run = daemon(root, db)   # the last kill: finish the round undisturbed
                    run.wait()
                if run.returncode != 0:
                    raise SystemExit(f"round {rounds}: the daemon exited with {run.returncode}")
                break
            stored = query(db, DETECTIONS)
            keys = [r[:3] for r in stored]
            duplicated += len(keys) - len(set(keys))
            ref_keys = {r[:3]: r for r in reference}
            lost += sum(1 for k in ref_keys if k not in set(keys))
            duplicated += sum(1 for k in set(keys) if k not in ref_keys)
            changed += sum(1 for r in stored if r[:3] in ref_keys and r != ref_keys[r[:3]])
            with closing(sqlite3.connect(db)) as conn:
                integrity_failures += conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok"
            states = dict(query(db, "SELECT state, COUNT(*) FROM files GROUP BY state"))
            quarantined += states.get("quarantined", 0)
            left_undone += args.files - states.get("done", 0)
            print(f"round {rounds}: {kills} kills so far; files {states}", flush=True)
        print(f"\n{kills} SIGKILLs (after {min(kill_moments):.1f}-{max(kill_moments):.1f} s, "
              f"median {np.median(kill_moments):.1f} s) over {rounds} round(s) of a {args.files}-file backlog, "
              f"{time.monotonic() - started:.0f} s")
        print(f"lost detections:            {lost}")
        print(f"duplicated detections:      {duplicated}")
        print(f"changed detections:         {changed}")
        print(f"integrity failures:         {integrity_failures}")
        print(f"files not done:             {left_undone}")
        print(f"good files quarantined:     {quarantined}")
        print(f"orphaned analysis children: {orphaned}")
        print(f"most kills in a row on one file: {max_in_row}")
        if lost or duplicated or integrity_failures or quarantined or left_undone:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
