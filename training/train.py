"""``train()``: one model, reusable by the CLI and by the hyper-parameter search.

The loop knows nothing of Optuna or of files: it takes typed configs and two splits, calls
``on_epoch(epoch, record)`` after each epoch (a search may raise from it to prune), and returns
the model at its best epoch by devel UAR.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from edgemon.analysis.frontend import features_from_log_mel
from training.adversary import RecorderAdversary, ramp, recorder_ids
from training.augment import AugmentConfig, augment
from training.configs import OptimConfig
from training.data import BACKGROUND, ClipSpan, Split, clip_span
from training.errors import DataError
from training.evaluate import uar
from training.losses import focal_loss
from training.model import ModelConfig, PrimateBiLSTM

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    model: PrimateBiLSTM           # on the CPU, in eval mode, with the best epoch's weights
    best_epoch: int
    best_uar: float
    history: list[dict]
    stopped_in: int | None = None  # the epoch a Ctrl-C or SIGTERM cut short (``keep_on_interrupt``)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def balanced_indices(targets: np.ndarray, rng: np.random.Generator, emphasis: np.ndarray | None = None,
                     background: int | None = None, background_share: float = 0.0) -> np.ndarray:
    """``len(targets)`` draws with replacement, each class equally likely (one epoch's sample);
    within a class, clips in proportion to ``emphasis`` (default: alike). With ``background_share``
    > 0, class ``background`` takes that share of the draws and the other classes split the rest
    equally: a recorder hears background nearly all the time, the paper's sampler a fifth of it."""
    emphasis = np.ones(len(targets)) if emphasis is None else np.asarray(emphasis, float)
    weights = emphasis / np.bincount(targets, weights=emphasis)[targets]
    if background_share:
        if not 0 < background_share < 1 or background is None:
            raise ValueError(f"background_share must lie in (0, 1) with a background class, got {background_share}")
        classes = np.flatnonzero(np.bincount(targets))
        others = max(1, len(classes) - 1)
        weights = weights * np.where(targets == background, background_share, (1 - background_share) / others)
    return rng.choice(len(targets), size=len(targets), replace=True, p=weights / weights.sum())


def pad_batch(features: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of ``[T_i, F]`` -> zero-padded ``[B, max T, F]`` and lengths ``[B]``."""
    lengths = torch.tensor([len(f) for f in features])
    batch = torch.zeros(len(features), int(lengths.max()), features[0].shape[1])
    for i, f in enumerate(features):
        batch[i, :len(f)] = torch.from_numpy(f)
    return batch, lengths


@torch.no_grad()
def predict(model: PrimateBiLSTM, features: list[np.ndarray], device: torch.device | str = "cpu",
            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities ``[n, C]`` and embeddings ``[n, h]`` of whole clips, in input order."""
    model.eval()
    order = np.argsort([len(f) for f in features])  # similar lengths together: little padding
    probs = np.zeros((len(features), model.config.n_classes), np.float32)
    embeddings = np.zeros((len(features), model.config.hidden), np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x, lengths = pad_batch([features[i] for i in idx])
        logits, emb = model(x.to(device), lengths.to(device))
        probs[idx] = torch.softmax(logits, dim=1).cpu().numpy()
        embeddings[idx] = emb.cpu().numpy()
    return probs, embeddings


def hard_negative_emphasis(model: PrimateBiLSTM, split: Split, strength: float, device) -> np.ndarray:
    """Per clip, how often to draw it within its class: a background clip ``1 + strength x``
    the model's probability that it is a call (whole clip, unaugmented), every other clip 1."""
    background = np.flatnonzero(split.targets == split.labels.index(BACKGROUND))
    probs, _ = predict(model, [split.features[i] for i in background], device)
    emphasis = np.ones(len(split))
    emphasis[background] = 1.0 + strength * (1.0 - probs[:, split.labels.index(BACKGROUND)])
    return emphasis


NEAR_CALL_S = 120.0     # "near": this close (seconds) to a labelled call of the same source recording


def near_call_emphasis(split: Split, strength: float, within_s: float = NEAR_CALL_S) -> np.ndarray:
    """Per clip, how often to draw it within its class: ``1 + strength`` for a background clip
    that lies within ``within_s`` of a call of this split cut from the same source recording, 1
    for every other clip. Such background holds what a call's neighbourhood holds (a gibbon bout's
    phrases that are not the labelled duet, a hornbill still in earshot): held-out false events
    concentrate there. Times come from the clip names (``data.clip_span``); a clip named
    otherwise is never near; a split with no clip so named is refused: the option would change
    nothing (a newcomer's own clips, ``AM11_001.WAV``, trained with it as without it)."""
    spans = [clip_span(c.path.name) for c in split.clips]
    if split.clips and not any(spans):
        raise DataError(f"--near-call-negatives reads each clip's source recording and times from its name "
                        f"(<label>_<source>_<start>_<end>_.flac, the ComParE clip names); no clip of "
                        f"{split.name} is named so (first: {split.clips[0].path.name!r}), so it would change nothing")
    background = split.labels.index(BACKGROUND)
    calls: dict[str, list[ClipSpan]] = {}
    for span, target in zip(spans, split.targets):
        if span and target != background:
            calls.setdefault(span.source, []).append(span)
    emphasis = np.ones(len(split))
    for i, (span, target) in enumerate(zip(spans, split.targets)):
        if span and target == background and any(span.gap_s(c) <= within_s for c in calls.get(span.source, ())):
            emphasis[i] = 1.0 + strength
    return emphasis


def background_pools(split: Split, source: list[np.ndarray], aug: AugmentConfig) -> list[list[np.ndarray]]:
    """For each clip, the background clips it may be mixed with: every training background clip,
    or with ``mix_other_recorders`` only those from other recorders, so that a call is heard over
    a place it was not recorded at (all of them when no other recorder has background). A clip
    without a recorder counts as its own, as in the grouped folds."""
    bg = split.labels.index(BACKGROUND)
    everything = [i for i, t in enumerate(split.targets) if t == bg]
    place = [c.recorder or c.path.name for c in split.clips]
    pools: dict[str, list[np.ndarray]] = {}
    for here in place:
        if here not in pools:
            others = [i for i in everything if aug.mix_other_recorders and place[i] != here]
            pools[here] = [source[i] for i in (others or everything)]
    return [pools[here] for here in place]


def train(model_config: ModelConfig, optim: OptimConfig, aug: AugmentConfig, train_split: Split,
          devel_split: Split, on_epoch: Callable[[int, dict], None] | None = None,
          progress: bool = True, log_epochs: bool = True, keep_on_interrupt: bool = False) -> TrainResult:
    """Train with class-balanced resampling, focal loss, AdamW and per-epoch lr decay.

    ``keep_on_interrupt``: a Ctrl-C (KeyboardInterrupt) during an epoch ends training with what the
    finished epochs gave (the best devel epoch; with ``average_last`` the average of the averaged epochs
    so far, or before them the last finished epoch: nothing is chosen on devel), marked
    ``stopped_in``; an hour of `fit` was lost to one (a newcomer trial). Off for callers that
    train many models (cross-validation, the search): there a Ctrl-C stops everything."""
    torch.manual_seed(optim.seed)
    rng = np.random.default_rng(optim.seed)
    device = resolve_device(optim.device)
    model = PrimateBiLSTM(model_config).to(device)
    adversary, recorders = None, None
    if optim.recorder_adversary:
        ids, count = recorder_ids(train_split)
        recorders = torch.from_numpy(ids)
        adversary = RecorderAdversary(model_config.hidden, count).to(device)
    trained = [*model.parameters(), *(adversary.parameters() if adversary else [])]
    optimiser = torch.optim.AdamW(trained, lr=optim.lr, weight_decay=optim.weight_decay)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=optim.lr_decay)
    source = train_split.augmentable
    to_input = None
    if train_split.mel is not None:
        to_input = functools.partial(features_from_log_mel, config=train_split.frontend)
    backgrounds = background_pools(train_split, source, aug) if aug.needs_background else None
    averaged: dict[str, torch.Tensor] | None = None
    near_emphasis = near_call_emphasis(train_split, optim.near_call_negatives) if optim.near_call_negatives else None
    background = train_split.labels.index(BACKGROUND) if optim.background_share else None

    best = (-1.0, 0, None)
    history: list[dict] = []
    epochs = range(1, optim.epochs + 1)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(epochs, desc="epochs", unit="epoch")
        epochs = bar
    stopped_in = None
    last_epoch: dict[str, torch.Tensor] | None = None
    try:
        for epoch in epochs:
            started = time.perf_counter()
            emphasis = near_emphasis
            if optim.hard_negatives and epoch > optim.epochs // 2:  # mined with the model as it is now
                mined = hard_negative_emphasis(model, train_split, optim.hard_negatives, device)
                emphasis = mined if emphasis is None else emphasis * mined
            model.train()
            order = balanced_indices(train_split.targets, rng, emphasis, background, optim.background_share)
            losses, adversary_losses = [], []
            for start in range(0, len(order), optim.batch_size):
                idx = order[start:start + optim.batch_size]
                x, lengths = pad_batch([augment(source[i], aug, rng, backgrounds and backgrounds[i], to_input)
                                        for i in idx])
                targets = torch.from_numpy(train_split.targets[idx]).to(device)
                logits, embedding = model(x.to(device), lengths.to(device))
                loss = task = focal_loss(logits, targets, optim.gamma)
                # a batch of no named recorder: nothing to guess
                if adversary is not None and (recorders[idx] >= 0).any():
                    scale = optim.recorder_adversary * ramp((epoch - 1 + start / len(order)) / optim.epochs)
                    guessed = adversary.loss(embedding, recorders[idx].to(device), scale)
                    adversary_losses.append(guessed.item())
                    loss = task + guessed
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(task.item())
            lr = optimiser.param_groups[0]["lr"]   # what this epoch trained at (the paper's lr x beta^(epoch-1))
            schedule.step()
            if optim.average_last and epoch > optim.epochs - optim.average_last:
                averaged = _accumulate(averaged, model)
            train_seconds = time.perf_counter() - started
            probs, _ = predict(model, devel_split.features, device)
            devel_uar = uar(devel_split.targets, probs.argmax(1), len(devel_split.labels))
            record = {"epoch": epoch, "loss": float(np.mean(losses)), "devel_uar": devel_uar,
                      "lr": lr, "train_seconds": train_seconds,
                      "seconds": time.perf_counter() - started,
                      # how well the recorder is still guessed (ln of the recorder count: not at all)
                      **({"adversary_loss": float(np.mean(adversary_losses))} if adversary_losses else {})}
            history.append(record)
            if optim.average_last and averaged is None:
                # Before the averaged epochs: what an interrupt keeps (nothing chosen on devel). Taken
                # once the epoch is in ``history``: a Ctrl-C while epoch 1 was scored on devel kept its
                # weights with no epoch finished, and ``history[-1]`` below raised IndexError.
                last_epoch = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            record = {**record, "predictions": probs.argmax(1)}  # for callers such as cross-validation
            if devel_uar > best[0]:
                best = (devel_uar, epoch, copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}))
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}", devel_uar=f"{devel_uar:.3f}",
                                best=f"{best[0]:.3f}@{best[1]}")
            elif log_epochs:
                log.info("epoch %d loss %.4f devel UAR %.3f (best %.3f @ %d)", epoch, record["loss"],
                         devel_uar, best[0], best[1])
            if on_epoch is not None:
                on_epoch(epoch, record)
            if optim.patience and epoch - best[1] >= optim.patience:
                break
    except KeyboardInterrupt:
        kept = (averaged if averaged is not None else last_epoch) if optim.average_last else best[2]
        if not keep_on_interrupt or kept is None:   # nothing finished to keep
            raise
        stopped_in = len(history) + 1
        if bar is not None:
            bar.close()
        log.warning("stopped in epoch %d of %d: keeping what the %d finished epoch(s) gave", stopped_in,
                    optim.epochs, len(history))
    model = model.cpu()
    if averaged is None and stopped_in is not None and optim.average_last:
        # Stopped before the epochs it averages: the last finished epoch, not the best devel one (a
        # trial: `fit --with-devel --average-last 5` stopped early kept an epoch chosen on devel, which
        # it trained on, under a config that says averaged).
        model.load_state_dict(last_epoch)
        return TrainResult(model=model.eval(), best_epoch=len(history), best_uar=history[-1]["devel_uar"],
                           history=history, stopped_in=stopped_in)
    if averaged is not None:  # no epoch is chosen on devel: the mean of the last epochs' weights
        count = averaged.pop("__count__")
        model.load_state_dict({k: (v / count).float() for k, v in averaged.items()})
        probs, _ = predict(model, devel_split.features)
        return TrainResult(model=model.eval(), best_epoch=len(history),
                           best_uar=uar(devel_split.targets, probs.argmax(1), len(devel_split.labels)),
                           history=history, stopped_in=stopped_in)
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(model=model, best_epoch=best[1], best_uar=best[0], history=history, stopped_in=stopped_in)


def _accumulate(total: dict | None, model: torch.nn.Module) -> dict:
    """Add the model's weights to a running sum, counted in ``__count__`` (checkpoint averaging)."""
    state = {k: v.detach().cpu().double() for k, v in model.state_dict().items()}
    if total is None:
        return {**state, "__count__": 1}
    return {**{k: total[k] + state[k] for k in state}, "__count__": total["__count__"] + 1}
