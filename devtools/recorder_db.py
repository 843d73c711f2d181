"""Recorder databases for the sync tests and bench/outbox_cost.py: files of random detections,
live coverage minutes and heartbeats, written through ``Store`` as the daemon writes them."""

from __future__ import annotations

import random
from pathlib import Path

from edgemon.storage.rows import CoverageMinute, Detection, Heartbeat

from edgemon.storage.store import Store

LABELS = ("bird", "gibbon", "insect", "frog")


def make_recorder(path: Path, device_id: str, *, files: int = 20, per_file: int = 10, seed: int = 0,
                  bundle_id: str = "bundle-a", start_day: str = "2024-05-01", heartbeats: int = 5,
                  clock_suspect_every: int = 0, coverage_minutes: int = 10) -> Path:
    """A recorder database with ``files`` analysed files of ``per_file`` detections each, live
    coverage minutes and heartbeats, written through ``Store`` like the daemon does."""
    rng = random.Random(seed)
    with Store(path) as store:
        for i in range(files):
            add_file(store, device_id, i, per_file, rng, bundle_id=bundle_id, start_day=start_day,
                     clock_suspect=bool(clock_suspect_every) and i % clock_suspect_every == 0)
        store.add_coverage(CoverageMinute(source="mic", device_id=device_id,
                                          minute_utc=f"{start_day}T05:{m:02d}:00Z",
                                          end_utc=f"{start_day}T05:{m:02d}:59Z", analysed_s=55.0,
                                          lost_dropped_s=5.0) for m in range(coverage_minutes))
        for b in range(heartbeats):
            store.add_heartbeat(Heartbeat(run_id=f"run-{seed}", mode="watch", device_id=device_id,
                                          at_utc=f"{start_day}T06:{b:02d}:00Z",
                                          started_utc=f"{start_day}T06:00:00Z", uptime_s=60.0 * b,
                                          disk_free_mb=5000.0, files_done=b))
    return path


def add_file(store: Store, device_id: str, i: int, per_file: int, rng: random.Random, *,
             bundle_id: str = "bundle-a", start_day: str = "2024-05-01", clock_suspect: bool = False) -> None:
    """Commit file number ``i`` (one minute of audio) with ``per_file`` random detections; called
    again for the same ``i`` it re-processes the file: its old detections are replaced."""
    source = f"{device_id}/{start_day.replace('-', '')}_{i // 60:02d}{i % 60:02d}00.wav"
    start = f"{start_day}T{i // 60:02d}:{i % 60:02d}:00Z"
    starts = sorted(rng.sample(range(0, 570), per_file))
    detections = [Detection(device_id=device_id, source=source, start_s=s / 10 + 0.1, end_s=s / 10 + 3.1,
                            start_utc=start, end_utc=None, time_source="filename", clock_suspect=clock_suspect,
                            label=rng.choice(LABELS), confidence=round(rng.uniform(0.5, 1), 3),
                            votes='{"m0": 0.9}', bundle_id=bundle_id) for s in starts]
    # Two detections at one start with one label would be one row: keep the natural key unique.
    unique = {(d.start_s, d.label): d for d in detections}
    store.commit_file(source, path=f"/data/{source}", size=1000 + i, mtime_ns=rng.randrange(10**12),
                      duration_s=60.0, start_utc=start, time_source="filename", clock_suspect=clock_suspect,
                      bundle_id=bundle_id, detections=list(unique.values()))
