"""``edgemon-train``'s entry point: the training side needs torch, einops and optuna, which the
recorder's install (scripts/setup.sh, ``pip install edgemon``) leaves out. Say so in one line
instead of a traceback."""

from __future__ import annotations

import sys

TRAINING_MODULES = ("torch", "einops", "optuna", "onnx", "sklearn", "matplotlib")


def main() -> None:
    try:
        from training.cli import main as training_main
    except KeyboardInterrupt:   # Ctrl-C while torch and the rest load (a second or two): nothing began
        raise SystemExit(130) from None
    except ModuleNotFoundError as exc:
        if exc.name not in TRAINING_MODULES:
            raise
        print(f"error: edgemon-train needs the training packages ({exc.name} is missing): "
              "run scripts/setup-dev.sh, or pip install 'edgemon[train]'", file=sys.stderr)
        raise SystemExit(1) from None
    training_main()
