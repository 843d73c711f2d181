"""The settings of a network and of its training, apart from torch: ``edgemon-train``'s command
line reads them, and its ``--help`` works where the training packages are not installed yet (a
newcomer trial: the recorder's install could not list the subcommands)."""

from __future__ import annotations

import dataclasses

from training.recipes import PAPER


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    n_mels: int = 128
    n_classes: int = 5
    hidden: int = PAPER.hidden      # h
    layers: int = PAPER.layers      # l
    dropout: float = PAPER.dropout  # p_drop, between LSTM layers and in the MLP
    tau: float = PAPER.tau          # normalised-softmax temperature
    # Subtract each band's mean over the input's frames first: a window's level and the recorder's
    # spectral colour (microphone, gain, steady noise floor) cancel, and only what changes is heard.
    centre_bands: bool = False


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimisation settings; defaults are the best setting of the paper's Table 2."""

    lr: float = PAPER.lr
    batch_size: int = PAPER.batch_size
    weight_decay: float = PAPER.weight_decay  # lambda
    lr_decay: float = PAPER.lr_decay          # beta: lr is multiplied by it after every epoch
    gamma: float = float(PAPER.gamma)         # focal-loss focusing parameter
    epochs: int = 300
    patience: int = 0              # stop after this many epochs without a better devel UAR; 0: never
    average_last: int = 0          # >0: return the mean weights of the last N epochs, not the best
    seed: int = 0
    device: str = "auto"           # "auto", "cpu", "cuda", "cuda:1", …
    hard_negatives: float = 0.0    # >0: in the second half, a background clip is drawn 1 + this x P(call) as often
    near_call_negatives: float = 0.0   # >0: a background clip near a labelled call is drawn 1 + this as often
    background_share: float = 0.0  # >0: the share of each epoch's draws that are background (0: one class's share)
    recorder_adversary: float = 0.0  # >0: weight of a reversed recorder classifier on the embedding (training.adversary)
