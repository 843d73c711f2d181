"""The options ``edgemon-train``'s commands share, and the checks that refuse a bad command line
before any work (one line, exit 2) rather than a traceback or a run that ignored an option."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgemon import console
from edgemon.analysis.frontend import KNOWN_KINDS, FrontendConfig
from edgemon.errors import EdgemonError
from training.recipes import PAPER

def said_when_defaulted(ctx: typer.Context, value: Path) -> Path:
    """``--data`` left out reads the Borneo set beside the checkout: said, so a user who forgot it
    does not take a model of Borneo's calls for one of their own (a newcomer trial: silent)."""
    source = ctx.get_parameter_source("data")   # typer's own click: compared by name
    if source is not None and source.name == "DEFAULT" and not ctx.resilient_parsing:
        logging.getLogger("training").info("no --data: the Borneo set at %s (give --data DIR for your own clips)",
                                           value)
    return value


DataOpt = Annotated[Path, typer.Option("--data", callback=said_when_defaulted, help="ComParE-style data directory (audio/, lab/); default: the Borneo set beside the checkout.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Run directory to write.")]

FrontendOpt = Annotated[str, typer.Option("--frontend", metavar=f"<{'|'.join(KNOWN_KINDS)}>", help="Model input: logmel (the paper's), pcen, or logmel_pcen (both side by side).")]
FMaxOpt = Annotated[float, typer.Option("--f-max", help="Top edge of the mel bands in Hz (the paper's: 8000, half the sample rate); the bands then cover 0 to this.")]


def frontend_option(kind: str, f_max: float = FrontendConfig.f_max) -> FrontendConfig:
    try:
        frontend = FrontendConfig.from_dict({"kind": kind})
    except EdgemonError as exc:
        raise console.error(f"--frontend: {exc}", console.EXIT_USAGE)
    if not frontend.f_min < f_max <= frontend.sample_rate / 2:
        raise console.error(f"--f-max {f_max:g}: must lie above {frontend.f_min:g} Hz and at most "
                            f"{frontend.sample_rate / 2:g} Hz (half the {frontend.sample_rate} Hz sample rate)",
                            console.EXIT_USAGE)
    return dataclasses.replace(frontend, f_max=f_max)


def device_option(name: str) -> str:
    """``--device`` checked before any work (torch would fail mid-run with a traceback): auto, cpu,
    or cuda[:N] where this torch sees that GPU."""
    import torch

    found = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name in ("auto", "cpu"):
        return name
    if found is None:
        raise console.error(f"--device must be auto, cpu or cuda[:N], not {name!r}", console.EXIT_USAGE)
    if int(found[1] or 0) >= torch.cuda.device_count():
        raise console.error(f"--device {name}: this torch ({torch.__version__}) sees {torch.cuda.device_count()} CUDA device(s)")
    return name


def positive(value):
    """An option that must be a finite number above 0 (a newcomer's --lr 0 or --tau -1 trained and
    reported success, or failed only after all the training; --tau inf trained a model that always
    says every class equally, --window-s inf ended in a traceback)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number above 0, got {value:g}")
    return value


def non_negative(value):
    """An option that must be a finite number of at least 0 (--gamma inf or --weight-decay inf
    trained every epoch on NaN, found only when the bundle was checked)."""
    return finite(value, "0 or above")


def finite(value, what: str):
    """An option that must be a finite number of at least 0 (inf trained to NaN, found only when
    the model was exported)."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be {what} and finite, got {value:g}")
    return value


def check_params_alone(params, **given) -> None:
    """A --params file sets the Table 2 options: one given beside it was ignored without a word
    (a trial's `cv --hidden 32 --params F` trained F's size)."""
    if params is None:
        return
    clash = [name for name, value in given.items() if value != getattr(PAPER, name)]
    if clash:
        raise console.error(f"--params {params} sets {', '.join('--' + n.replace('_', '-') for n in clash)}: "
                            f"give those in the file, or leave --params out", console.EXIT_USAGE)


def check_network_options(recipes: list[str], **given) -> None:
    """Options of the network recipes, given when only the baseline is cross-validated, changed
    nothing (`cv --recipe baseline --recorder-adversary 1` ran the baseline as ever)."""
    if any(r != "baseline" for r in recipes):
        return
    ignored = ["--" + name.replace("_", "-") for name, value in given.items() if value]
    if ignored:
        raise console.error(f"{', '.join(ignored)}: only the network recipes (paper, field) take "
                            f"{'this' if len(ignored) == 1 else 'these'}, and --recipe baseline is the only one chosen",
                            console.EXIT_USAGE)


def share(value):
    """An option that is a probability or share, in [0, 1]."""
    if value is not None and not 0 <= value <= 1:
        raise typer.BadParameter(f"must lie in [0, 1], got {value:g}")
    return value


def check_window(window_s: float, hop_s: float) -> None:
    """The recorder refuses a hop longer than its window (audio between windows never heard): say
    so now, not once every fold has trained and its bundle is checked (a review)."""
    if hop_s > window_s:
        raise console.error(f"--hop-s {hop_s:g} is longer than --window-s {window_s:g}: the recorder would skip "
                            f"audio between windows; give a hop of at most the window", console.EXIT_USAGE)


def check_average_last(average_last: int, epochs: int) -> None:
    if average_last > epochs:
        raise console.error(f"--average-last {average_last} is more than --epochs {epochs}: only {epochs} epoch(s) "
                            "could be averaged, and the run would be named and recorded as more", console.EXIT_USAGE)


MixOtherOpt = Annotated[bool, typer.Option("--mix-other-recorders", help="Mix calls only with background clips from other recorders (with --field).")]
CvMixOtherOpt = Annotated[bool, typer.Option("--mix-other-recorders", help="Mix calls only with background clips from other recorders (with --recipe field).")]
TargetOpt = Annotated[float, typer.Option(callback=positive, help="Field operating point: false events per hour of held-out background that the point (per-class thresholds and evidence rules, or event gate levels) may let through, shared among the call classes where it finds most calls.")]
NearCallOpt = Annotated[float, typer.Option(callback=non_negative, help="Draw a background clip that lies within 120 s of a labelled call of the same source recording 1 + N as often as others of its class (0: off).")]
BackgroundShareOpt = Annotated[float, typer.Option(help="Draw background for this share of each epoch, the call classes equally for the rest (0: every class equally, as the paper).")]
AdversaryOpt = Annotated[float, typer.Option(callback=lambda v: finite(v, "0 (off) or above"), help="Recorder adversary: a classifier guesses each clip's recorder from the embedding and its gradient into the model is reversed, at this weight (0: off; training.adversary).")]
HardNegOpt = Annotated[float, typer.Option(callback=non_negative, help="Hard negatives: in the second half of training, draw a background clip 1 + N x P(call) as often as others of its class (0: off).")]
PoolOpt = Annotated[bool, typer.Option("--pool/--no-pool", help="Add lab/pool.csv (train-only background and duets, when the data set has it) to training.")]
CvPoolOpt = Annotated[bool, typer.Option("--pool/--no-pool", help="Add lab/pool.csv (train-only background and duets, when the data set has it) to each fold's training side only, less the held-out recorders' clips.")]
ParamsOpt = Annotated[Optional[Path], typer.Option("--params", help="A search trial's settings (JSON, `scripts/summarise_search.py --write-params`): replace the Table 2 options and the field preset.")]
CentreOpt = Annotated[bool, typer.Option("--centre-bands", help="Subtract each band's mean over the window inside the network (cancels a recorder's level and colour).")]


def check_background_share(share: float) -> None:
    if not 0 <= share < 1:
        raise console.error(f"--background-share must lie in [0, 1), got {share:g}", console.EXIT_USAGE)
