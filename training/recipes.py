"""Training recipes in one place: the paper's Table 2 setting, the field preset, the recorder's
default window, how a cv recipe is named, and seconds as frontend frames.

A leaf module (it imports nothing of ``training``), so the configs' defaults (``ModelConfig``,
``OptimConfig``), the CLI's option defaults and the search's first trial all read these objects
rather than repeating the numbers.
"""

from __future__ import annotations

import dataclasses

from edgemon.analysis.frontend import FrontendConfig

WINDOW_S = 4.0   # the recorder's window (s): written into bundles, the field recipe's crop
HOP_S = 2.0      # the recorder's window hop (s)


@dataclasses.dataclass(frozen=True)
class Table2:
    """The best setting of the paper's Table 2: its twelve searched hyper-parameters.

    ``p_r`` is "/" there: the masks are off (``p_fm = p_tm = 0``), so it does not matter."""

    lr: float = 3.373e-4
    batch_size: int = 32
    tau: float = 0.6203          # normalised-softmax temperature
    weight_decay: float = 0.0578  # lambda
    lr_decay: float = 0.82       # beta: lr is multiplied by it after every epoch
    gamma: int = 3               # focal-loss focusing parameter (an integer in the search space)
    p_fm: float = 0.0
    p_tm: float = 0.0
    p_r: float = 0.0
    layers: int = 2              # l
    hidden: int = 256            # h
    dropout: float = 0.05        # p_drop

    def trial_params(self) -> dict:
        """The setting as the search's parameters (``training.hpo.suggest`` names them so)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FieldPreset:
    """The field augmentations (off in the paper's recipe), as ``fit --field`` and the ``field``
    cv recipe use them: time shift, background mixed in at 0-20 dB SNR on half the clips,
    +-6 dB gain; crops of the deployment window come with them (``seconds_to_frames``)."""

    time_shift: bool = True
    p_mix: float = 0.5
    snr_db: tuple[float, float] = (0.0, 20.0)
    gain_db: float = 6.0

    def augment_fields(self) -> dict:
        """Keyword arguments of ``AugmentConfig``."""
        return dataclasses.asdict(self)

    def trial_params(self) -> dict:
        """The preset as the ``field`` search space's parameters (the SNR range is not searched)."""
        return {"time_shift": self.time_shift, "p_mix": self.p_mix, "gain_db": self.gain_db}


PAPER = Table2()
FIELD = FieldPreset()
# The default bundle's members: Table 2 and the field preset at h = 128 (README, "The embedded default
# bundle"); the grouped-CV search starts there too, so its first trials score what ships.
SHIPPED_HIDDEN = 128


def seconds_to_frames(seconds: float, frontend: FrontendConfig) -> int:
    """``seconds`` of audio as a whole number of ``frontend`` frames (hop_length samples each)."""
    return int(round(seconds * frontend.sample_rate / frontend.hop_length))


def recipe_name(base: str, *, frontend_kind: str = "logmel", f_max: float = FrontendConfig.f_max,
                average_last: int = 0, hidden: int = PAPER.hidden,
                layers: int = PAPER.layers, window_s: float = WINDOW_S, hop_s: float = HOP_S,
                centre_bands: bool = False, hard_negatives: float = 0.0,
                mix_other_recorders: bool = False, near_call_negatives: float = 0.0,
                background_share: float = 0.0, recorder_adversary: float = 0.0) -> str:
    """A cv recipe's name (its directory under the cv run, its key in ``cv.json``): ``base``
    followed by what differs from the paper's recipe, e.g. ``field-avg5-h128l2-cb``.

    In this order: ``-<frontend>`` unless log-mel, ``-fmaxF`` unless the paper's top band edge, ``-avgN``, ``-hHlL`` unless Table 2's size,
    ``-wS`` unless the default window and hop, ``-cb`` (centred bands), ``-hnN`` (hard negatives),
    ``-ncN`` (background near labelled calls drawn 1 + N as often), ``-bgS`` (background drawn
    for a share S of each epoch), ``-advN`` (a recorder adversary of weight N), ``-xrec`` (mixing in only background of other recorders: the ``field`` recipe's option)."""
    name = base + ("" if frontend_kind == "logmel" else f"-{frontend_kind}")
    name += f"-fmax{f_max:g}" if f_max != FrontendConfig.f_max else ""
    name += f"-avg{average_last}" if average_last else ""
    name += f"-h{hidden}l{layers}" if (hidden, layers) != (PAPER.hidden, PAPER.layers) else ""
    name += f"-w{window_s:g}" if (window_s, hop_s) != (WINDOW_S, HOP_S) else ""
    name += "-cb" if centre_bands else ""
    name += f"-hn{hard_negatives:g}" if hard_negatives else ""
    name += f"-nc{near_call_negatives:g}" if near_call_negatives else ""
    name += f"-bg{background_share:g}" if background_share else ""
    name += f"-adv{recorder_adversary:g}" if recorder_adversary else ""
    return name + ("-xrec" if mix_other_recorders else "")
