"""Where a Ctrl-C may land during an Optuna search.

Optuna turns a KeyboardInterrupt raised inside a trial's own work into a failed trial, as the CLI
promises. One raised while Optuna itself writes the study (asking for a trial, telling it its value,
a report) leaves the trial running in the storage and Optuna answers ``AssertionError: Should not
reach.`` with a traceback (seen in CI once in many runs). So the first SIGINT (or SIGTERM, which
the CLI answers as one) interrupts at once only inside the trial's own work; elsewhere it is held
until Optuna has finished writing and the search then stops. A second one interrupts at once,
wherever it lands.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Callable

import optuna

log = logging.getLogger(__name__)


class TrialInterrupts:
    """Wraps the objective and the trial it is given; ``stop_if_held`` is the study's callback."""

    def __init__(self):
        self.held: int | None = None   # the signal held while Optuna wrote
        self._own_work = False

    def _on_signal(self, signum, frame) -> None:
        if self._own_work or self.held is not None:
            raise KeyboardInterrupt
        self.held = signum
        log.warning("signal %d: stopping once the study is written (again to stop at once)", signum)

    def _raise_if_held(self) -> None:
        if self.held is not None:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        """The handler for the body's duration (signals reach the main thread only; elsewhere, none)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
            self._raise_if_held()   # the last trial was told its value before the held Ctrl-C is answered
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def objective(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        def run(trial: optuna.Trial) -> float:
            self._raise_if_held()   # held while Optuna asked for this trial: it fails, as an interrupted one does
            self._own_work = True
            try:
                return objective(_OptunaCallsHeld(trial, self))
            finally:
                self._own_work = False
        return run

    def stop_if_held(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.held is not None:
            study.stop()

    @contextlib.contextmanager
    def optuna_writing(self):
        """Inside the trial's work, a call into Optuna: a Ctrl-C then waits until it returns."""
        if threading.current_thread() is not threading.main_thread():
            # Signals reach the main thread only. Switched off from another thread (an objective
            # running folds side by side), the one mark held a Ctrl-C while the main thread
            # trained on, and raised the held one in that thread (a review).
            yield
            return
        was, self._own_work = self._own_work, False
        try:
            yield
        finally:
            self._own_work = was
        if was:
            self._raise_if_held()


class _OptunaCallsHeld:
    """The trial, each of its methods (report, should_prune, suggest_*, set_user_attr) called with
    the signal held; its other attributes as they are."""

    def __init__(self, trial: optuna.Trial, interrupts: TrialInterrupts):
        self._trial, self._interrupts = trial, interrupts

    def __getattr__(self, name: str):
        value = getattr(self._trial, name)
        if not callable(value):
            return value

        def held(*args, **kwargs):
            with self._interrupts.optuna_writing():
                return value(*args, **kwargs)
        return held
