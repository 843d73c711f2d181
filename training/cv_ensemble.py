"""``edgemon-train cv-ensemble``: grouped-CV score and thresholds of an ensemble of cv recipes.

A member is the directory of one averaged recipe of a ``cv`` run (``<cv_dir>/<recipe>``, holding
``foldN.onnx``). On each fold, the members' fold models become a bundle, and the recorder's own
``Analyzer`` runs it over the fold's held-out audio (``training.field``): each clip alone, its
background end to end, and recordings assembled from its calls and background. So the thresholds,
the field operating point and the calibration are chosen on the ensemble's own vote, exactly as
the recorder computes it. Members may use different frontends (log-mel, PCEN): each reads its own
columns, as ``onnx_export.read_columns`` arranges in a bundle. The recipes must come from cv runs with
the same folds. Test is not touched.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from edgemon.analysis.analyzer import BATCH_SIZE
from edgemon.analysis.decisions import OperatingPoint
from edgemon.analysis.frontend import FrontendConfig
from training.bundling import shared_frontend
from training.cv import grouped_folds, held_out_with_pool, validation_recorders
from training.errors import DataError
from training.field import windows_of
from training.field_votes import DEFAULT_PREVALENCE, FieldVotes, fold_field_votes, models_digest
from training.out_dirs import as_out_error, write_whole
from training.operating import DEFAULT_RULES, DEFAULT_TARGET_FALSE_PER_HOUR, RULES, field_report, rules_name
from training.thresholds import field_scores, field_summary, thresholds_for

log = logging.getLogger(__name__)


def _recipe(member: Path) -> tuple[dict, dict]:
    """The cv summary and the recipe's result for a ``<cv_dir>/<recipe>`` directory."""
    summary_path = member.parent / "cv.json"
    if not summary_path.is_file():
        if (member / "cv.json").is_file():   # the cv run itself, one level too high
            recipes = sorted(p.name for p in member.iterdir() if (p / "fold0.onnx").is_file())
            raise DataError(f"{member}: a cv run; give one of its recipe directories: "
                            f"{', '.join(str(member / r) for r in recipes) or '(none kept fold models)'}")
        raise DataError(f"{member}: not a recipe directory of a cv run (no {summary_path})")
    try:
        summary = json.loads(summary_path.read_text())
        result = summary["recipes"].get(member.name)
        if result is not None and "members" in result:
            FrontendConfig.from_dict(result["frontend_config"])
            result["labels"], result["window_s"], result["hop_s"], summary["folds"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{summary_path}: not a readable cv summary ({type(exc).__name__}: {exc})") from exc
    if result is None or "members" not in result:
        raise DataError(f"{member}: no fold models for recipe {member.name!r} in {summary_path} "
                        "(only recipes with --average-last keep them)")
    return summary, result


def _check_same_folds(members: list[Path], recipes: list[tuple[dict, dict]]) -> None:
    (first_summary, first), name = recipes[0], members[0]
    # The folds are the recorders each holds out (a recorder is never split): runs of other seeds
    # on those same folds vote together (a seed ensemble was refused for its seed alone).
    for member, (summary, result) in zip(members[1:], recipes[1:]):
        if (summary["k"], summary["folds"]) != (first_summary["k"], first_summary["folds"]):
            raise DataError(f"{member}: its cv run used other folds than {name}'s")
        if (result["labels"], result["window_s"], result["hop_s"]) != (first["labels"], first["window_s"],
                                                                       first["hop_s"]):
            raise DataError(f"{member}: labels or recorder window differ from {name}'s")


def _check_out(out: Path) -> None:
    """``out`` may be a new file or an earlier cv-ensemble result, never a directory or another
    file (a cv summary, the votes it reads): writing there would destroy it. Its directory must
    take a file now: a read-only one was found only after every fold model had run (a review)."""
    try:
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise DataError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    if not out.exists():
        return
    try:
        earlier = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or "field" not in earlier or "members" not in earlier:
        raise DataError(f"--out {out} exists and is not an earlier cv-ensemble result; writing there would destroy "
                        f"it: choose another --out")


def cv_ensemble(members: list[Path], load, out: Path, max_false_rate: float,
                target_false_per_hour: float = DEFAULT_TARGET_FALSE_PER_HOUR,
                prevalence: float = DEFAULT_PREVALENCE, reuse_votes: bool = False, votes_from: Path | None = None,
                rules: str = DEFAULT_RULES, pool=None, at_point: Path | None = None) -> dict:
    """Score the vote of ``members`` on their cv folds; write ``out`` (JSON) with its thresholds,
    the field measure, a field operating point and calibration (raw votes in ``<out>.votes.npz``,
    the reliability diagram in ``<out>.reliability.png``).

    ``load(frontend)`` gives train + devel, merged as ``cv`` merged them (only the clips, labels
    and recorders are used: the fold bundles compute their own features from the audio).
    ``reuse_votes`` reads the raw votes of an earlier run with the same ``out`` instead of running
    the models again (to choose for another target in seconds); ``votes_from`` reads them from
    that file. ``rules`` names the evidence rules the operating point may use (``RULES``).
    ``pool(labels)``, when given, gives the train-only clips (``lab/pool.csv``) whose held-out
    recorders' clips join each fold's held-out audio (``held_out_with_pool``): grouped CV over
    train + devel + pool. The cv runs must then have kept those clips out of the fold's training,
    as ``cv`` does. ``at_point`` names a bundle whose own operating point is measured and
    calibrated instead of one chosen for the target (its target, when it states one, replaces
    ``target_false_per_hour``): to re-fit a shipped bundle's calibration on a wider measure.
    """
    if rules not in RULES:
        raise DataError(f"unknown rules {rules!r}: choose from {', '.join(RULES)}")
    _check_out(Path(out))
    if not members:
        raise DataError("cv-ensemble needs at least one member recipe directory")
    members = [Path(m) for m in members]
    recipes = [_recipe(m) for m in members]
    _check_same_folds(members, recipes)
    summary, first = recipes[0]
    labels = tuple(first["labels"])
    frontends = [FrontendConfig.from_dict(result["frontend_config"]) for _, result in recipes]
    shared_frontend(frontends, members[0])  # the members must be able to share one bundle's stream
    reference = load(FrontendConfig())
    if tuple(reference.labels) != labels:
        raise DataError(f"{members[0]}: its labels {labels} differ from the data's {reference.labels}")
    point, point_from = None, None
    if at_point is not None:   # before the models run: a point these rules cannot measure is refused now
        point, point_from, target_false_per_hour, stated_rules = _bundle_point(Path(at_point), labels,
                                                                              target_false_per_hour)
        chosen_by = rules_name(stated_rules)
        if point.decides_by_gate != (rules == "gate"):
            raise DataError(f"--at-point {at_point}: its operating point carries an event gate; give --rules gate"
                            if point.decides_by_gate else
                            f"--at-point {at_point}: its operating point has no event gate; "
                            f"give the rules it was chosen by ({chosen_by or 'not recorded'}), not --rules gate")
        if chosen_by is not None and chosen_by != rules:
            # what choosing anew for the target gives is reported beside the point: by its own rules
            raise DataError(f"--at-point {at_point}: its operating point was chosen with --rules {chosen_by}, "
                            f"not {rules}; give --rules {chosen_by}")
    folds = grouped_folds(reference, summary["k"], summary["seed"])
    if validation_recorders(reference, folds) != [f["validation_recorders"] for f in summary["folds"]]:
        raise DataError(f"{members[0]}: the data's folds differ from those its cv run used (data changed?)")

    models = [[member / result["members"][k] for member, (_, result) in zip(members, recipes)]
              for k in range(len(folds))]
    scored_alone = len(reference.clips)
    reference, folds = held_out_with_pool(reference, None if pool is None else pool(reference.labels), folds)
    pool_clips = len(reference.clips) - scored_alone
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = Path(votes_from) if votes_from else out.with_suffix(".votes.npz")
    names = tuple(m.name for m in members)   # recipe names: what each member was trained as
    if reuse_votes or votes_from:
        votes = FieldVotes.load(saved)
        if votes.labels != labels or len(votes.clip_targets) != len(reference.clips):
            raise DataError(f"{saved}: votes for other labels or clips than these members' folds"
                            + (f" ({len(votes.clip_targets)} clips, here {len(reference.clips)}: made with"
                               f"{'out' if pool_clips else ''} the pool held out? measure again without --votes)"
                               if votes.labels == labels else ""))
        # A newcomer passed a trio's votes for a pair: every figure was the trio's, under the pair's names.
        if votes.member_count != len(members) or (votes.members and votes.members != names):
            raise DataError(f"{saved}: votes of {', '.join(votes.members) or f'{votes.member_count} member(s)'}, "
                            f"not of {', '.join(names)}")
        _check_votes_made_here(saved, votes, models, prevalence)
    else:
        votes = fold_field_votes(models, frontends, reference, folds, first["window_s"], first["hop_s"], prevalence)
        votes.members = names
        votes.save(saved)
    try:   # it draws the reliability diagram beside --out: a full disk there named no file
        field = field_report(votes, target_false_per_hour, out.with_suffix(".reliability.png"),
                             f"{out.stem}: grouped CV, held-out events", RULES[rules], point)
    except OSError as e:
        raise as_out_error(e, out) from None
    if point_from:
        field["operating_point"]["from_bundle"] = point_from
    order = np.concatenate([va for _, va in folds])
    windows = windows_of(votes)
    fold_of = np.concatenate([np.full(len(s.winner), s.fold) for s in votes.clips])
    windows["clip"] = order[windows["clip"]]
    targets = reference.targets
    summary_at_rate = field_summary(windows, targets, labels, max_false_rate)
    thresholds = summary_at_rate["thresholds"]
    untuned = _fold_uars(windows, fold_of, folds, targets, labels, {})
    tuned = held_out_fold_uars(windows, fold_of, folds, targets, labels, max_false_rate)
    result = {
        "uar_mean": float(np.mean(tuned)), "uar_std": float(np.std(tuned)),
        "uar_mean_untuned": float(np.mean(untuned)), "uar_std_untuned": float(np.std(untuned)),
        "members": [str(m) for m in members], "frontend_kinds": [f.kind for f in frontends],
        "labels": list(labels), "k": summary["k"],
        "seed": summary["seed"], "window_s": first["window_s"], "hop_s": first["hop_s"],
        "pool": summary.get("pool"), "held_out_pool_clips": pool_clips, "prevalence": prevalence,
        # what uar_* and the window figures score (cv.json's own clip scores are train + devel's alone)
        "clips_scored": "train+devel+pool" if pool_clips else "train+devel",
        "fold_uar_untuned": untuned, "fold_uar_at_thresholds": tuned,
        "uar_thresholds_chosen_on": "the other folds' held-out windows",
        # the same thresholds chosen on every fold, this one included: optimistic (the window UAR
        # of the default's grouped CV read 0.937 +- 0.026 so, 0.890 +- 0.076 chosen on the others)
        "fold_uar_at_thresholds_in_sample": _fold_uars(windows, fold_of, folds, targets, labels, thresholds),
        **summary_at_rate,
        "field": field,
    }
    # Whole or not at all: a full disk cut the earlier result short, and the same command then refused
    # its own --out as "not an earlier cv-ensemble result" (a trial).
    write_whole(out, (json.dumps(result, indent=2) + "\n").encode())
    return result


def _check_votes_made_here(saved: Path, votes: FieldVotes, models: list[list[Path]], prevalence: float) -> None:
    """Votes read back must be these members' fold models' (a newcomer passed another seed's
    votes under the same recipe name, and every figure was theirs) at this prevalence (one given
    with --votes was recorded, but the votes' own was measured)."""
    if votes.models_sha256:
        try:
            made_here = votes.models_sha256 == models_digest(models)
        except OSError as e:
            raise DataError(f"{saved}: cannot read the fold models to check the votes are theirs ({e})") from None
        if not made_here:
            raise DataError(f"{saved}: votes of other fold models than these members' (another run, seed or "
                            f"epochs?): measure again without --votes")
    else:
        log.warning("%s: votes from before 2026-12-06 say neither which fold models made them nor at what "
                    "prevalence; they are taken to be these members' at --prevalence %g", saved, prevalence)
    if votes.batch_size is None:
        log.warning("%s: votes made before the field measure voted in the recorder's batches of %d (in batches of "
                    "16): int8 members' votes differ from the recorder's by a little; measure again without --votes "
                    "for the recorder's own", saved, BATCH_SIZE)
    elif votes.batch_size != BATCH_SIZE:
        raise DataError(f"{saved}: votes made in batches of {votes.batch_size} windows, the recorder's are "
                        f"{BATCH_SIZE}: measure again without --votes")
    if votes.prevalence is not None and prevalence != votes.prevalence:
        raise DataError(f"{saved}: votes assembled at --prevalence {votes.prevalence:g}, not {prevalence:g}: "
                        f"give that, or measure again without --votes")


def _bundle_point(path: Path, labels: tuple[str, ...], target: float) -> tuple[OperatingPoint, str, float, dict | None]:
    """A bundle's own operating point, its id, the target it was chosen for (else ``target``) and
    the rules it says it was chosen by (None when it does not say)."""
    from edgemon.analysis.bundle import load_bundle
    from edgemon.errors import BundleError

    try:
        bundle = load_bundle(path)
    except BundleError as exc:
        raise DataError(f"--at-point {path}: {exc}") from exc
    if tuple(bundle.labels) != labels:
        raise DataError(f"--at-point {path}: the bundle's labels {tuple(bundle.labels)} differ from the members' {labels}")
    stated = bundle.manifest.get("operating_point") or {}
    return (OperatingPoint.from_manifest(bundle.manifest, bundle.thresholds), bundle.bundle_id,
            float(stated.get("target_false_per_hour") or target), stated.get("rules"))


def held_out_fold_uars(windows, fold_of, folds, targets, labels, max_false_rate: float) -> list[float]:
    """Each fold's clip UAR from its own held-out windows at thresholds for ``max_false_rate``
    chosen on the other folds' windows only: chosen on every fold, a fold's own background set
    the thresholds it was scored at, and the "UAR on recorders it never heard" was tuned on them."""
    scores = []
    for k, (_, va) in enumerate(folds):
        others = {key: v[fold_of != k] for key, v in windows.items()}
        thresholds = thresholds_for(others, targets, labels, max_false_rate)
        scores.append(_fold_uars(windows, fold_of, folds, targets, labels, thresholds)[k])
    return scores


def _fold_uars(windows, fold_of, folds, targets, labels, thresholds) -> list[float]:
    """Each fold's clip UAR from its own held-out windows (the spread of the ensemble's score)."""
    scores = []
    for k, (_, va) in enumerate(folds):
        keep = fold_of == k
        local = {key: v[keep] for key, v in windows.items()}
        local["clip"] = np.searchsorted(va, local["clip"])  # fold-local clip indices; va is sorted
        scores.append(field_scores(local, targets[va], labels, thresholds)["uar"])
    return scores
