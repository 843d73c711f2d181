"""``edgemon-train``'s entry point: the training side needs torch, einops and optuna, which the
recorder's install (scripts/setup.sh, ``pip install edgemon``) leaves out. Say so in one line
instead of a traceback."""

from __future__ import annotations

import signal
import sys

TRAINING_MODULES = ("torch", "einops", "optuna", "onnx", "sklearn", "matplotlib")


def main() -> None:
    # Ctrl-C while torch and the rest load (a second or two) is held until the imports are done:
    # raised inside torch's C++ extension loading, a KeyboardInterrupt aborted the process
    # ("terminate called after throwing … pybind11::error_already_set", exit -6). Nothing began.
    # A second Ctrl-C interrupts at once, for an import that hangs.
    interrupted = []

    def hold(signum, frame):
        if interrupted:
            signal.default_int_handler(signum, frame)
        interrupted.append(True)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        from training.cli import main as training_main
        if not _help_only(sys.argv[1:]):
            _load_torch()
    except ModuleNotFoundError as exc:
        _say_missing(exc)
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise SystemExit(130)
    # The command line itself needs no torch (``training.configs``): its --help lists the
    # subcommands on a recorder's install; a command that trains says what is missing.
    try:
        training_main()
    except ModuleNotFoundError as exc:
        _say_missing(exc)
    except KeyboardInterrupt:   # while the command line is built, before a command runs
        raise SystemExit(130) from None


def _help_only(args: list[str]) -> bool:
    """Whether the command line only asks for help or the version (no torch needed)."""
    return not args or any(a in ("-h", "--help", "--version") for a in args)


def _load_torch() -> None:
    """torch, where installed, while Ctrl-C is held (its C++ loading aborted on one); a command
    that needs it and finds it missing says so itself."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        pass


def _say_missing(exc: ModuleNotFoundError) -> None:
    if exc.name not in TRAINING_MODULES:
        raise exc
    print(f"error: edgemon-train needs the training packages ({exc.name} is missing): "
          "run scripts/setup-dev.sh, or pip install 'edgemon[train]'", file=sys.stderr)
    raise SystemExit(1) from None
