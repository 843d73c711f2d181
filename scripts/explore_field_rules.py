"""Explore window and event rules on stored grouped-CV field votes, in seconds, before building any.

Reads a ``<out>.votes.npz`` of ``edgemon-train cv-ensemble`` (with every member's probabilities,
as kept since the evidence rules) and, per class, tries a family of rules on the raw window votes:
a window counts for class c when it passes the family's window rule; consecutive counting windows
form a run; a run is an event when it has ``k`` windows, a summed confidence ``E`` and a peak
``thi``. Each family's per-class candidates share the false-event budget as
``training.operating.choose_point`` does, once on all folds ("same folds") and once per fold on
the others ("other folds", pooled). This is numpy, not the recorder's merger: it is for ruling
families out; what is kept is built into ``edgemon.events.OperatingPoint`` and measured by
``cv-ensemble --rules`` (its "windows" rows agree with cv-ensemble's within the coarser threshold
grid here: 24 levels, not 48). Precision is approximate (events kept against calls found).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python scripts/explore_field_rules.py runs/cvens.votes.npz
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from training.field_votes import FieldVotes

def _running_floor(s, window: int) -> np.ndarray:
    """Each class's mean member probability less its median over the ``window`` windows before
    (causal, as a recorder could keep it; the first windows use the stream's first ten)."""
    mean = s.probs.mean(1)
    floor = np.array([np.median(mean[max(0, i - window):i] if i >= 10 else mean[:10], axis=0)
                      for i in range(len(mean))])
    return mean - floor


_FLOORS: dict = {}


def _floored(s, window: int) -> np.ndarray:
    key = (id(s), window)
    if key not in _FLOORS:
        _FLOORS[key] = _running_floor(s, window)
    return _FLOORS[key]


WINDOW_RULES = {
    # what a window's confidence for class c is (0: not a window of c)
    "winner": lambda s, c: np.where(s.winner == c, s.confidence, 0.0),
    "agree": lambda s, c: np.where((s.winner == c) & (s.members == c).all(axis=1), s.confidence, 0.0),
    "min-member": lambda s, c: np.where(s.winner == c, s.probs[:, :, c].min(axis=1), 0.0),
    "margin-over-background": lambda s, c: np.where(s.winner == c, s.probs[:, :, c].mean(1) - s.probs[:, :, 0].mean(1), 0.0),
    # a site's noise floor per class: the 0.1 keeps levels on the scale the other rules search
    "running-floor-5min": lambda s, c: np.where(s.winner == c, _floored(s, 150)[:, c] + 0.1, 0.0),
    "running-floor-30min": lambda s, c: np.where(s.winner == c, _floored(s, 900)[:, c] + 0.1, 0.0),
    "stream-median": lambda s, c: np.where(s.winner == c, s.probs.mean(1)[:, c] - np.median(s.probs.mean(1)[:, c]) + 0.1, 0.0),
    "stream-ratio": lambda s, c: np.where(s.winner == c, s.probs.mean(1)[:, c] / np.median(s.probs.mean(1)[:, c]) / 10, 0.0),
}
FAMILIES = {
    # name: (window rule, smoothing half-width, gap bridged, windows, evidence levels, opening levels)
    "windows 1-4": ("winner", 0, 0, range(1, 5), (0,), (0,)),
    "windows 1-6": ("winner", 0, 0, range(1, 7), (0,), (0,)),
    "members agree": ("agree", 0, 0, range(1, 7), (0,), (0,)),
    "min over members": ("min-member", 0, 0, range(1, 7), (0,), (0,)),
    "margin over background": ("margin-over-background", 0, 0, range(1, 7), (0,), (0,)),
    "smoothed over 3 windows": ("winner", 1, 0, range(1, 7), (0,), (0,)),
    "one-window gap bridged": ("winner", 0, 1, range(1, 7), (0,), (0,)),
    "evidence": ("winner", 0, 0, range(1, 7), tuple(np.arange(0, 4.01, 0.25)), (0,)),
    "hysteresis": ("winner", 0, 0, range(1, 7), (0,), (0, 0.5, 0.52, 0.54, 0.56, 0.58, 0.6, 0.62)),
    "running floor 5 min": ("running-floor-5min", 0, 0, range(1, 7), (0,), (0,)),
    "running floor 30 min": ("running-floor-30min", 0, 0, range(1, 7), (0,), (0,)),
    "running floor 5 min + hysteresis": ("running-floor-5min", 0, 0, range(1, 7), (0,), (0, 0.5, 0.52, 0.54, 0.56, 0.58, 0.6, 0.62)),
    "running floor 30 min + hysteresis": ("running-floor-30min", 0, 0, range(1, 7), (0,), (0, 0.5, 0.52, 0.54, 0.56, 0.58, 0.6, 0.62)),
    # bounds: a floor that knows the whole stream (the held-out recorders' audio) in advance
    "stream median (bound)": ("stream-median", 0, 0, range(1, 7), (0,), (0,)),
    "stream ratio (bound)": ("stream-ratio", 0, 0, range(1, 7), (0,), (0,)),
}
TARGETS = (5, 20, 30)


def _runs(active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _window_conf(s, c, rule, smooth):
    conf = WINDOW_RULES[rule](s, c)
    if smooth:
        conf = np.convolve(conf, np.ones(2 * smooth + 1) / (2 * smooth + 1), mode="same")
    return conf


def _run_features(votes, s, c, t, rule, smooth, gap, with_calls):
    conf = _window_conf(s, c, rule, smooth)
    active = conf >= max(t, 1e-9)
    if gap:
        idx = np.flatnonzero(active)
        for a, b in zip(idx[:-1], idx[1:]):
            if 1 < b - a <= gap + 1:
                active[a + 1:b] = True
    mine = np.flatnonzero(s.calls[:, 2] == c) if with_calls else []
    out = []
    for a, b in zip(*_runs(active)):
        w = conf[a:b]
        t0, t1 = s.start[a] * votes.frame_s, (s.start[b - 1] + s.frames[b - 1]) * votes.frame_s
        hit = tuple(int(j) for j in mine if s.calls[j, 0] < t1 and s.calls[j, 1] > t0)
        out.append((b - a, w.sum(), w.max(), hit))
    return out


def class_rows(votes: FieldVotes, c: int, family) -> list[tuple]:
    """Per candidate: (false per fold [5], found per fold [5], events per fold [5], params)."""
    rule, smooth, gap, ks, evidence, opening = family
    folds = votes.folds()
    confs = np.concatenate([_window_conf(s, c, rule, smooth)[s.winner == c] for s in votes.background_streams + votes.assembled])
    rows = []
    for t in np.unique(np.concatenate([[0.0], np.quantile(confs, np.linspace(0, 1, 24))])):
        bg = [(s.fold, r) for s in votes.background_streams for r in _run_features(votes, s, c, t, rule, smooth, gap, False)]
        asm = [(s.fold, i, r) for i, s in enumerate(votes.assembled) for r in _run_features(votes, s, c, t, rule, smooth, gap, True)]
        for k, e, o in itertools.product(ks, evidence, opening):
            if o and o <= t:
                continue
            ok = lambda r: r[0] >= k and r[1] >= e - 1e-9 and r[2] >= o - 1e-9
            false, found, events = (np.zeros(len(folds), int) for _ in range(3))
            seen = set()
            for f, r in bg:
                false[folds.index(f)] += ok(r)
            for f, i, r in asm:
                if ok(r):
                    events[folds.index(f)] += 1
                    new = {(i, j) for j in r[3]} - seen
                    seen |= new
                    found[folds.index(f)] += len(new)
            rows.append((false, found, events, dict(t=round(float(t), 3), k=k, E=float(e), open=float(o))))
    return rows


def share_budget(tables: dict, budget: int, folds: list[int]) -> dict:
    """``choose_point``'s exact search: per class the candidate finding most calls for each spend."""
    plans = {0: (0, ())}
    for c, rows in tables.items():
        best = {}
        for f in range(budget + 1):
            ok = [r for r in rows if r[0][folds].sum() <= f]
            if ok:
                best[f] = max(ok, key=lambda r: (r[1][folds].sum(), -r[0][folds].sum()))
        grown = {}
        for spent, (found, chosen) in plans.items():
            for r in best.values():
                total = spent + int(r[0][folds].sum())
                if total <= budget and (total not in grown or found + r[1][folds].sum() > grown[total][0]):
                    grown[total] = (found + r[1][folds].sum(), chosen + ((c, r),))
        plans = grown
    return dict(max(plans.values(), key=lambda p: p[0])[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("votes", help="a cv-ensemble .votes.npz with member probabilities")
    parser.add_argument("--family", action="append", choices=list(FAMILIES), help="default: all")
    args = parser.parse_args()
    votes = FieldVotes.load(args.votes)
    hours = np.array([s.duration_s / 3600 for s in sorted(votes.background_streams, key=lambda s: s.fold)])
    calls = sum(int((s.calls[:, 2] != votes.background).sum()) for s in votes.assembled)
    classes = [c for c in range(len(votes.labels)) if c != votes.background]
    n = len(hours)
    for name in args.family or FAMILIES:
        tables = {c: class_rows(votes, c, FAMILIES[name]) for c in classes}
        for target in TARGETS:
            chosen = share_budget(tables, int(np.floor(target * hours.sum() + 1e-9)), list(range(n)))
            same = [sum(r[i].sum() for r in chosen.values()) for i in range(3)]
            other = np.zeros(3)
            for f in range(n):
                rest = [g for g in range(n) if g != f]
                for r in share_budget(tables, int(np.floor(target * hours[rest].sum() + 1e-9)), rest).values():
                    other += [r[0][f], r[1][f], r[2][f]]
            print(f"{name:24s} target {target:2d}/h | same folds {same[0] / hours.sum():5.1f}/h recall {same[1] / calls:.3f} "
                  f"precision~{same[1] / max(same[2], 1):.2f} | other folds {other[0] / hours.sum():5.1f}/h "
                  f"recall {other[1] / calls:.3f} precision~{other[1] / max(other[2], 1):.2f}", flush=True)


if __name__ == "__main__":
    main()
