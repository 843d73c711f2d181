"""Exponential delays between retries of something that keeps failing (an audio device, a
file-system observer): shared by ``listen``'s capture and ``watch``."""

from __future__ import annotations


class Backoff:
    """Exponential delays: ``initial_s``, doubling, capped at ``max_s``; ``reset`` starts over."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 60.0, factor: float = 2.0):
        self.initial_s, self.max_s, self.factor = initial_s, max_s, factor
        self._next = initial_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * self.factor, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s
