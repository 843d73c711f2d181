"""Search throughput: trials per hour and seconds per epoch, and how it scales with workers.

Runs real ``edgemon-train hpo`` workers on the Borneo splits against a fresh SQLite study, first
one worker, then N workers sharing the study (on a GPU: all on the one device), each worker with
its share of the CPU threads. Prints, per setting: wall time, finished trials, epochs trained,
seconds per epoch, trials per hour and the speed-up over one worker.

    python bench/hpo_speed.py [--trials 6] [--epochs 3] [--workers 1 2] [--space field] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch


def run_workers(n: int, args, root: Path) -> dict:
    out = root / f"w{n}"
    storage = f"sqlite:///{out / 'study.db'}"
    out.mkdir(parents=True)
    threads = max(1, (os.cpu_count() or 1) // n)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "training", "hpo", "--data", str(args.data), "--out", str(out),
           "--storage", storage, "--trials", str(args.trials), "--epochs", str(args.epochs),
           "--space", args.space, "--device", args.device, "--startup-trials", str(args.trials)]
    started = time.perf_counter()
    workers = [subprocess.Popen(cmd + ["--seed", str(i)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in range(n)]
    for w in workers:
        _, err = w.communicate()
        if w.returncode:
            raise SystemExit(f"worker failed: {err[-1500:]}")
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name="edgemon", storage=storage).trials
    finished = [t for t in trials if t.state.is_finished()]
    epochs = sum(len(t.intermediate_values) for t in finished)
    busy = sum(t.user_attrs.get("seconds", 0.0) for t in finished)
    return {"wall": wall, "trials": len(finished), "epochs": epochs,
            "s_per_epoch": busy / max(epochs, 1), "trials_per_hour": 3600 * len(finished) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/borneo"))
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--space", default="field", choices=("paper", "field"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else \
        f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device}; space {args.space}; {args.trials} trials of {args.epochs} epochs "
          f"(no pruning: every trial runs all epochs); per-trial s/epoch includes the devel pass")
    print(f"{'workers':>7} | {'wall s':>7} | {'trials':>6} | {'epochs':>6} | {'s/epoch':>7} | "
          f"{'trials/h':>8} | speed-up")
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for n in args.workers:
            r = run_workers(n, args, Path(tmp))
            base = base or r["trials_per_hour"]
            print(f"{n:>7} | {r['wall']:7.1f} | {r['trials']:6d} | {r['epochs']:6d} | {r['s_per_epoch']:7.2f} | "
                  f"{r['trials_per_hour']:8.1f} | {r['trials_per_hour'] / base:.2f}x")


if __name__ == "__main__":
    main()
