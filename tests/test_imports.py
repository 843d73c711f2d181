"""The recorder side must never pull in the training stack."""

import subprocess
import sys

FORBIDDEN = ("torch", "einops", "optuna", "training", "sklearn", "matplotlib")


def test_edgemon_and_its_cli_import_no_training_stack():
    code = (
        "import sys, pkgutil, importlib, edgemon\n"
        "for m in pkgutil.walk_packages(edgemon.__path__, 'edgemon.'):\n"
        "    importlib.import_module(m.name)\n"
        "import edgemon.cli\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_check_itself_sees_a_forbidden_import():
    # Guard against a check that cannot fail: importing the training side does load torch.
    code = "import sys, training.model; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
