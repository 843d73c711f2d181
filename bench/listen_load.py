"""Live listening load: CPU share of one core, resident memory, and the delay from the end of a call
to its detection row, for ``edgemon listen`` in real time with the default bundle and overlap.

Starts a PulseAudio server of its own with a null sink (as tests/test_listen.py does; needs
Debian's pulseaudio, pulseaudio-utils, libportaudio2, libasound2-plugins), plays a soundscape of
Borneo test clips (gibbon duets and a great argus between background clips, known times) into it
with ``paplay``, and runs the real CLI, ``edgemon listen --device pulse``, as a child process.
Once its stream is running, the child's CPU time (utime + stime from /proc) and resident memory
(VmRSS) are sampled every second; model loading and start-up are left out. The delay of a call is
its detection row's ``created_at`` minus the moment the call's last sample was played (paplay's
start plus the call's end offset; PulseAudio's own buffering is in it, as in the field).

    .venv/bin/python bench/listen_load.py [--rounds 3] [--data ../shared/data/borneo]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soundfile  # noqa: E402

from devtools.soundscapes import (PART_A, PART_B, SAMPLE_RATE, VirtualAudio,  # noqa: E402
                                  pulseaudio_missing, soundscape)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK      # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(data: Path, out: Path, rounds: int) -> list[tuple[str, float, float]]:
    """``rounds`` x (part A + part B) as one WAV; the calls as (label, start_s, end_s)."""
    parts, calls, offset = [], [], 0.0
    for i in range(rounds):
        for names in (PART_A, PART_B):
            piece = out.with_name(f"piece{i}.wav")
            calls += [(label, offset + s, offset + e) for label, s, e in soundscape(data, names, piece)]
            x = soundfile.read(piece, dtype="float32")[0]
            parts.append(x)
            offset += len(x) / SAMPLE_RATE
    soundfile.write(out, np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "borneo")
    parser.add_argument("--rounds", type=int, default=3, help="soundscape repeats (~60 s each)")
    args = parser.parse_args()
    why = pulseaudio_missing()
    if why:
        raise SystemExit(f"error: {why}")
    if not (args.data / "lab" / "test.csv").is_file():
        raise SystemExit(f"error: needs the Borneo data at {args.data}")
    work = Path(tempfile.mkdtemp(prefix="listen-load-"))
    calls = build(args.data, work / "scape.wav", args.rounds)
    duration = soundfile.info(work / "scape.wav").duration
    audio = VirtualAudio()
    audio.start()
    db, log_path = work / "live.db", work / "listen.log"
    command = [str(Path(sys.executable).parent / "edgemon"), "listen", "--device", "pulse", "--db", str(db)]
    child = None
    try:
        with open(log_path, "w") as log:
            child = subprocess.Popen(command, env=audio.client_env(), stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while "-> running" not in log_path.read_text():
            if time.monotonic() > deadline or child.poll() is not None:
                raise SystemExit(f"error: listen did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        cpu0, wall0 = cpu_seconds(child.pid), time.monotonic()
        rss = [rss_mb(child.pid)]
        played = time.time()
        player = audio.play(work / "scape.wav")
        while player.poll() is None:
            time.sleep(1.0)
            rss.append(rss_mb(child.pid))
        time.sleep(6.0)   # the last call's event closes a window or two after it ends
        rss.append(rss_mb(child.pid))
        cpu, wall = cpu_seconds(child.pid) - cpu0, time.monotonic() - wall0
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
        audio.close()

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT label, start_s, end_s, created_at FROM detections ORDER BY start_s").fetchall()
    delays, found = [], 0
    for label, start, end in calls:
        t0, t1 = played + start, played + end
        match = [r for r in rows if r[0] == label and min(r[2], t1) - max(r[1], t0) >= 1.0]
        if match:
            found += 1
            created = dt.datetime.fromisoformat(match[0][3].replace("Z", "+00:00")).timestamp()
            delays.append(created - t1)
    half = len(rss) // 2
    print(f"command: {' '.join(command)}  (env: PulseAudio null-sink monitor; bench/listen_load.py)")
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"soundscape {duration:.0f} s, {len(calls)} calls, played in real time")
    print(f"CPU: {cpu:.2f} s over {wall:.1f} s listening = {100 * cpu / wall:.1f} % of one core")
    print(f"RSS: {rss[0]:.1f} MB at start, {max(rss):.1f} MB peak, {rss[-1]:.1f} MB at end; "
          f"mean of 2nd half - mean of 1st half = {statistics.mean(rss[half:]) - statistics.mean(rss[:half]):+.2f} MB")
    print(f"detections: {len(rows)} rows, {found}/{len(calls)} calls found")
    if delays:
        print(f"call end -> detection row: median {statistics.median(delays):.2f} s, "
              f"min {min(delays):.2f} s, max {max(delays):.2f} s (window 4 s, hop 2 s)")
    print(f"work directory: {work}")


if __name__ == "__main__":
    main()
