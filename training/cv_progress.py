"""``edgemon-train cv``'s progress: a bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


class CvProgress:
    """``cv``'s progress, per fold and epoch: a bar on a terminal, else (a log file, the journal)
    one log line per epoch with the time left at the pace so far."""

    def __init__(self, terminal: bool | None = None):
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = None
        self.started = time.monotonic()
        self.recipe: str | None = None

    def __enter__(self) -> CvProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, event: dict) -> None:
        if event["recipe"] != self.recipe:   # a recipe's folds: timed (and barred) on their own
            self.__exit__()
            self.recipe, self.started, self.bar = event["recipe"], time.monotonic(), None
            if self.terminal and event["epochs"]:
                from tqdm import tqdm

                self.bar = tqdm(total=event["folds"] * event["epochs"], desc=f"cv {self.recipe}", unit="epoch")
        where = f"cv {event['recipe']}: fold {event['fold']}/{event['folds']}"
        if event["epoch"] is None:
            if self.bar is None:
                log.info("%s done (%s)", where, _duration(time.monotonic() - self.started))
            return
        done = (event["fold"] - 1) * event["epochs"] + event["epoch"]
        total = event["folds"] * event["epochs"]
        if self.bar is not None:
            self.bar.set_description(f"cv {event['recipe']} fold {event['fold']}/{event['folds']}")
            self.bar.set_postfix(uar=f"{event['uar']:.3f}")
            self.bar.update(1)
            return
        elapsed = time.monotonic() - self.started
        log.info("%s, epoch %d/%d: validation UAR %.3f; %s elapsed, about %s left", where, event["epoch"],
                 event["epochs"], event["uar"], _duration(elapsed), _duration(elapsed / done * (total - done)))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
