"""The search's grouped-CV objective, and the feature pack that carries the data to a machine
the audio cannot reach."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import optuna
import pytest

from training.data import BACKGROUND, load_split
from training.errors import DataError
from training.feature_pack import pack, unpack
from training.hpo_cv import clip_windows, window_scores


def test_a_pack_gives_back_the_clips_and_their_log_mel_within_half_a_step(tiny_dataset, tmp_path):
    train = load_split(tiny_dataset, "train")
    devel = load_split(tiny_dataset, "devel", train.labels)
    path = pack({"train": train, "devel": devel}, tmp_path / "pack.npz")
    back = unpack(path)
    assert list(back) == ["train", "devel"]
    every = np.concatenate(train.features + devel.features)
    half_step = (every.max() - every.min()) / 255 / 2
    for name, split in (("train", train), ("devel", devel)):
        got = back[name]
        assert [c.path.name for c in got.clips] == [c.path.name for c in split.clips]
        assert [c.recorder for c in got.clips] == [c.recorder for c in split.clips]
        assert [c.label for c in got.clips] == [c.label for c in split.clips]
        assert got.labels == split.labels and got.frontend == split.frontend
        np.testing.assert_array_equal(got.targets, split.targets)
        for a, b in zip(got.features, split.features):
            assert a.shape == b.shape and a.dtype == np.float32
            assert np.abs(a - b).max() <= half_step * 1.001


def test_a_file_that_is_not_a_pack_is_named_in_the_error(tiny_dataset, tmp_path):
    bad = tmp_path / "notes.npz"
    bad.write_text("hello")
    with pytest.raises(DataError, match="notes.npz: not a feature pack"):
        unpack(bad)
    half = tmp_path / "half.npz"   # a pack half-copied to another machine
    train = load_split(tiny_dataset, "train")
    whole = pack({"train": train}, tmp_path / "whole.npz").read_bytes()
    half.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match="half.npz: not a"):
        unpack(half)


def test_clips_are_cut_into_the_recorders_windows():
    from edgemon.analysis.windows import WindowSpec

    features = [np.arange(300 * 4, dtype=np.float32).reshape(300, 4), np.zeros((50, 4), np.float32)]
    windows, owner = clip_windows(features, WindowSpec(frames=125, hop=62))
    assert [len(w) for w in windows] == [125, 125, 125, 125, 50]
    assert owner.tolist() == [0, 0, 0, 0, 1]
    # The last window ends on the clip's last frame, as the recorder's: the tail is scored too.
    np.testing.assert_array_equal(windows[3], features[0][175:])


def test_window_scores_count_background_windows_called_calls():
    labels = (BACKGROUND, "call")
    targets = np.array([0, 1])
    owner = np.array([0, 0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9], [0.4, 0.6]])
    scores = window_scores(probs, owner, targets, labels)
    assert scores["background_called"] == pytest.approx(0.25)
    assert scores["window_uar"] == pytest.approx((0.75 + 1.0) / 2)


def _train(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_a_search_with_the_grouped_cv_objective_runs_from_a_pack(tiny_dataset, tmp_path):
    packed = tmp_path / "features.npz"
    done = _train("pack-features", "--data", tiny_dataset, "--out", packed)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "hpo"
    # No --data: the pack alone is read (a directory that does not exist proves it).
    done = _train("hpo", "--data", tmp_path / "no-audio-here", "--features", packed, "--out", out,
                  "--objective", "cv", "--space", "field", "--folds", "2", "--trials", "3", "--epochs", "2",
                  "--average-last", "5", "--centre-bands", "--startup-trials", "2", "--seed", "0", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best grouped-CV window UAR" in done.stdout
    study = optuna.load_study(study_name="edgemon", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["objective"] == "cv"
    assert study.user_attrs["scoring"]["average_last"] == 2  # what was averaged: 5 of 2 epochs is 2
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for t in complete:
        folds = t.user_attrs["fold_window_uar"]
        assert len(folds) == 2 and all(0.0 <= f <= 1.0 for f in folds)
        assert t.value == pytest.approx(np.mean(folds))
        assert len(t.user_attrs["fold_background_called"]) == 2
        assert sorted(t.intermediate_values) == [0, 1]
    # The same study cannot go on under the other objective.
    done = _train("hpo", "--data", tiny_dataset, "--out", out, "--objective", "devel", "--trials", "4",
                  "--epochs", "1")
    assert done.returncode == 1
    assert "searches the cv objective, not devel" in done.stderr


FOUND = {"layers": 1, "hidden": 64, "dropout": 0.1, "tau": 0.5, "lr": 1e-3, "batch_size": 64,
         "weight_decay": 0.01, "lr_decay": 0.9, "gamma": 2, "p_fm": 0.1, "p_tm": 0.05, "p_r": 0.5,
         "time_shift": False, "p_mix": 0.25, "gain_db": 3.0}


def test_a_trials_params_give_back_the_settings_the_search_trained():
    from edgemon.analysis.frontend import FrontendConfig
    from training.hpo import settings_from_params, suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    asked = suggest(trial, "field", FrontendConfig(), 4.0)
    space, again = settings_from_params(trial.params, FrontendConfig(), 4.0)
    assert space == "field" and again == asked
    with pytest.raises(ValueError, match="out of the range"):
        settings_from_params({**FOUND, "layers": 9}, FrontendConfig())
    with pytest.raises(ValueError, match="unknown search parameter"):
        settings_from_params({**FOUND, "colour": 1}, FrontendConfig())
    with pytest.raises(ValueError, match="'hidden'"):
        settings_from_params({k: v for k, v in FOUND.items() if k != "hidden"}, FrontendConfig())


def test_fit_and_cv_train_a_found_setting(tiny_dataset, tmp_path):
    import json

    params = tmp_path / "found.json"
    params.write_text(json.dumps(FOUND))
    done = _train("fit", "--data", tiny_dataset, "--params", params, "--epochs", "1", "--quiet", "--device", "cpu",
                  "--out", tmp_path / "fit")
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "fit" / "config.json").read_text())
    assert (config["model"]["hidden"], config["model"]["layers"], config["optim"]["batch_size"]) == (64, 1, 64)
    assert (config["augment"]["p_mix"], config["augment"]["time_shift"], config["augment"]["crop_frames"]) == (0.25, False, 125)
    done = _train("cv", "--data", tiny_dataset, "--params", params, "--recipe", "field", "--folds", "2",
                  "--epochs", "1", "--out", tmp_path / "cv")
    assert done.returncode == 0, done.stderr[-2000:]
    recipes = json.loads((tmp_path / "cv" / "cv.json").read_text())["recipes"]
    assert [name.split("-")[0] for name in recipes] == ["field"] and "-h64l1-" in next(iter(recipes))
    # The settings are of the field space: naming another recipe is a usage error, as is a bad file.
    done = _train("cv", "--data", tiny_dataset, "--params", params, "--recipe", "paper", "--out", tmp_path / "cv2")
    assert done.returncode == 2 and "--recipe field" in done.stderr
    done = _train("fit", "--data", tiny_dataset, "--params", tmp_path / "nothing.json", "--out", tmp_path / "fit2")
    assert done.returncode == 2 and "nothing.json: not a readable JSON file" in done.stderr


def test_a_worker_with_other_scoring_settings_is_refused_by_the_study(tiny_dataset, tmp_path):
    out = tmp_path / "hpo"
    args = ("hpo", "--data", tiny_dataset, "--out", out, "--objective", "cv", "--folds", "2", "--trials", "1",
            "--epochs", "1", "--average-last", "1", "--device", "cpu")
    done = _train(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    done = _train(*args[:-6], "--epochs", "2", "--average-last", "1", "--trials", "2", "--device", "cpu")
    assert done.returncode == 1 and "scores its trials with epochs 1 (here 2)" in done.stderr, done.stderr[-2000:]
    # A study made before 2026-12-05 recorded --average-last as given, beyond --epochs: the same
    # command line still resumes it (what was averaged, every epoch, is the same).
    study = optuna.load_study(study_name="edgemon", storage=f"sqlite:///{out / 'study.db'}")
    study.set_user_attr("scoring", {**study.user_attrs["scoring"], "average_last": 5})
    done = _train(*args[:-3], "5", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_study_resumed_with_centred_bands_or_other_clips_is_refused(tiny_dataset, tmp_path):
    """A review: the devel objective's study took a worker with --centre-bands, and one on
    another data set, and mixed their trials (an ensemble of them reported UARs on neither)."""
    import shutil

    out = tmp_path / "hpo"
    args = ("hpo", "--out", out, "--trials", "1", "--epochs", "1", "--device", "cpu")
    done = _train(*args, "--data", tiny_dataset)
    assert done.returncode == 0, done.stderr[-2000:]
    done = _train(*args[:4], "2", *args[5:], "--data", tiny_dataset, "--centre-bands")
    assert done.returncode == 1 and "centre_bands False (here True)" in done.stderr, done.stderr[-2000:]
    other = shutil.copytree(tiny_dataset, tmp_path / "other")
    train_csv = other / "lab" / "train.csv"
    train_csv.write_text("\n".join(train_csv.read_text().splitlines()[:-1]) + "\n")   # one clip fewer
    done = _train(*args[:4], "2", *args[5:], "--data", other)
    assert done.returncode == 1 and "scores its trials with clips " in done.stderr, done.stderr[-2000:]
    done = _train(*args[:4], "2", *args[5:], "--data", tiny_dataset)              # the same: resumed
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_params_file_with_a_wrong_type_is_refused_before_training():
    from edgemon.analysis.frontend import FrontendConfig
    from training.hpo import settings_from_params

    with pytest.raises(ValueError, match=r"lr: expected a number, got '0.001'"):
        settings_from_params({**FOUND, "lr": "0.001"}, FrontendConfig())
    with pytest.raises(ValueError, match=r"^lr: expected a number, got 'fast'$"):   # Optuna's words named none (a review)
        settings_from_params({"comment": "best of run 3", **FOUND, "lr": "fast"}, FrontendConfig())
    with pytest.raises(ValueError, match=r"64.5 of the parameter .hidden. is out of the range"):
        settings_from_params({**FOUND, "hidden": 64.5}, FrontendConfig())
    with pytest.raises(ValueError, match=r"missing search parameter 'lr'"):
        settings_from_params({k: v for k, v in FOUND.items() if k != "lr"}, FrontendConfig())
    with pytest.raises(ValueError, match=r"^tau: expected a finite number, got None$"):   # JSON null (a review)
        settings_from_params({**FOUND, "tau": None}, FrontendConfig())
    with pytest.raises(ValueError, match=r"^lr: expected a finite number, got nan$"):     # JSON NaN
        settings_from_params({**FOUND, "lr": float("nan")}, FrontendConfig())


def test_a_reference_trial_stopped_by_ctrl_c_is_queued_again(tmp_path):
    from training.hpo import _enqueue_once

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    _enqueue_once(study, FOUND)
    _enqueue_once(study, FOUND)                       # waiting: not twice
    trial = study.ask()
    assert trial.params == {} and len(study.trials) == 1
    study.tell(trial, state=optuna.trial.TrialState.FAIL)   # as a KeyboardInterrupt leaves it
    _enqueue_once(study, FOUND)
    waiting = [t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == FOUND


def test_pack_out_must_be_new_or_a_pack_and_a_pack_without_the_pool_says_so(tiny_dataset, tmp_path):
    study = tmp_path / "study.db"
    study.write_bytes(b"SQLite format 3\x00 months of trials")
    done = _train("pack-features", "--data", tiny_dataset, "--out", study)
    assert done.returncode == 1 and "exists and is not a feature pack" in done.stderr
    assert study.read_bytes() == b"SQLite format 3\x00 months of trials"
    packed = tmp_path / "features.npz"
    assert _train("pack-features", "--data", tiny_dataset, "--out", packed).returncode == 0
    assert _train("pack-features", "--data", tiny_dataset, "--out", packed).returncode == 0   # an earlier pack
    with_pool = tmp_path / "with-pool"
    shutil.copytree(tiny_dataset, with_pool)
    train_rows = (with_pool / "lab" / "train.csv").read_text().splitlines()
    (with_pool / "lab" / "pool.csv").write_text("\n".join([train_rows[0], *train_rows[1:4]]) + "\n")
    no_pool = tmp_path / "no-pool.npz"
    assert _train("pack-features", "--data", with_pool, "--out", no_pool, "--no-pool").returncode == 0
    done = _train("hpo", "--features", no_pool, "--out", tmp_path / "hpo", "--objective", "cv", "--pool",
                  "--trials", "1", "--epochs", "1", "--device", "cpu")
    assert done.returncode == 1 and "packed with --no-pool; search with --no-pool too" in done.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="notes.txt: not a feature pack"):
        unpack(text)


def test_writing_a_trials_params_never_empties_a_file_for_a_trial_that_is_not_there(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="edgemon")
    study.enqueue_trial(FOUND)
    study.optimize(lambda t: 0.5 if t.suggest_int("layers", 1, 4) else 0.0, n_trials=1)
    failed = study.ask({"layers": optuna.distributions.IntDistribution(1, 4)})   # an interrupted trial
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    keep = tmp_path / "keep.json"
    keep.write_text('{"kept": true}')
    script = [sys.executable, "scripts/summarise_search.py", f"sqlite:///{tmp_path / 's.db'}", "--write-params"]
    for number in ("99", "-1", "1"):
        done = subprocess.run([*script, number, str(keep)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "not a complete or pruned trial" in done.stderr, done.stderr
        assert keep.read_text() == '{"kept": true}'
    done = subprocess.run([*script, "0", str(keep)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(keep.read_text())["layers"] == FOUND["layers"]


def test_the_cv_objective_scores_the_held_out_recorders_pool_clips_too(tiny_dataset_with_pool):
    """As the field measure does: grouped CV over train + devel + pool, each pool clip scored in the
    fold that kept it out of training."""
    from training.data import load_pool, load_split, merge
    from training.hpo import SearchConfig
    from training.hpo_cv import CvObjective

    train_split = load_split(tiny_dataset_with_pool, "train")
    data = merge(train_split, load_split(tiny_dataset_with_pool, "devel", train_split.labels))
    pool = load_pool(tiny_dataset_with_pool, data.labels)
    objective = CvObjective(SearchConfig(objective="cv", average_last=1, window_s=0.5, hop_s=0.25), data, pool,
                            suggest=None, folds=2)
    scored = [objective.measured.subset(va) for _, va in objective.measured_folds]
    assert sum(len(s.clips) for s in scored) == len(data.clips) + len(pool.clips)
    for s, recorders in zip(scored, objective.held_out):
        assert {c.recorder for c in s.clips} == set(recorders)
    alone = CvObjective(SearchConfig(objective="cv", average_last=1, window_s=0.5, hop_s=0.25), data, None,
                        suggest=None, folds=2)
    assert sum(len(alone.measured.subset(va).clips) for _, va in alone.measured_folds) == len(data.clips)


@pytest.mark.parametrize("command, option", [("cv", "--hidden"), ("fit", "--hidden"), ("fit", "--lr"),
                                             ("fit", "--field"), ("fit", "--crop-s")])
def test_an_option_the_params_file_sets_is_refused_beside_it(tiny_dataset, tmp_path, command, option):
    """`cv --hidden 32 --params F` trained F's size without a word (a newcomer trial); `fit --params F
    --field` trained without the field augmentations (another)."""
    params = tmp_path / "p.json"
    params.write_text(json.dumps(FOUND))
    value = {"--lr": ["0.5"], "--hidden": ["32"], "--crop-s": ["1"], "--field": []}[option]
    done = _train(command, "--data", tiny_dataset, "--out", tmp_path / "r", "--params", params, option, *value,
                  "--epochs", "1")
    assert done.returncode == 2 and not (tmp_path / "r").exists(), done.stderr
    assert (f"{option} beside it" if option in ("--field", "--crop-s") else f"sets {option}") in done.stderr


def test_recall_at_reads_the_held_out_trade_off_at_a_rate():
    from training.hpo_cv import recall_at

    points = [(9.3, 0.568), (9.3, 0.593), (17.3, 0.668), (22.3, 0.762), (26.6, 0.70)]
    assert recall_at(points, 9.3) == pytest.approx(0.593)            # the better of two at one rate
    assert recall_at(points, 13.3) == pytest.approx((0.593 + 0.668) / 2)
    assert recall_at(points, 26.6) == pytest.approx(0.762)           # more false events buy nothing less
    assert recall_at(points, 100.0) == pytest.approx(0.762)
    # A point beaten by a quieter one is no corner of the trade-off.
    assert recall_at([(5, 0.5), (10, 0.4), (20, 0.9)], 15) == pytest.approx(0.5 + 0.4 * 10 / 15)
    # Below the quietest point: the line from silence, so a model that came near the target
    # scores by how near (13.6 / h at 0.58 read at 10 / h), and one far off scores little.
    assert recall_at([(13.6, 0.582), (19.2, 0.795)], 10) == pytest.approx(0.582 * 10 / 13.6)
    assert recall_at([(30, 0.9), (60, 0.95)], 10) == pytest.approx(0.3)
    assert recall_at(points, 4.65) == pytest.approx(0.593 / 2)
    assert recall_at([(0.0, 0.4), (5.0, 0.9)], 0.0) == pytest.approx(0.4)
    assert recall_at([], 10.0) == 0.0


def test_a_search_with_the_field_objective_scores_trials_by_held_out_events(tiny_dataset_with_pool, tmp_path):
    out = tmp_path / "hpo"
    done = _train("hpo", "--data", tiny_dataset_with_pool, "--out", out, "--objective", "field", "--space", "field",
                  "--folds", "2", "--trials", "1", "--epochs", "1", "--average-last", "1", "--device", "cpu",
                  "--target-false-per-hour", "12.5", "--no-start-from-paper", "--seed", "3", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "event recall at 12.5 false events / h" in done.stdout
    study = optuna.load_study(study_name="edgemon", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["objective"] == "field"
    assert study.user_attrs["scoring"]["target_false_per_hour"] == 12.5
    assert study.user_attrs["scoring"]["rules"] == "hysteresis" and study.user_attrs["scoring"]["pool"] is True
    trial = study.trials[0]
    curve = trial.user_attrs["held_out"]
    # A point is chosen for the target itself, beside the trade-off's own targets.
    assert [row["target"] for row in curve] == [1, 2, 5, 10, 12.5, 20, 30, 45, 60]
    assert trial.user_attrs["background_hours"] > 0
    assert 0.0 <= trial.value <= 1.0
    assert len(trial.user_attrs["fold_window_uar"]) == 2
    shown = subprocess.run([sys.executable, "scripts/summarise_search.py", f"sqlite:///{out / 'study.db'}"],
                           capture_output=True, text=True, timeout=60)
    assert "(event recall at 12.5 false events / h)" in shown.stdout and "held out, by target: 1: " in shown.stdout
    # Another target is another scoring: the study refuses a worker that reads recall elsewhere;
    # a target without the field objective, or the field objective on a feature pack (no audio to
    # run the recorder over), is a usage error.
    done = _train("hpo", "--data", tiny_dataset_with_pool, "--out", out, "--objective", "field", "--space", "field",
                  "--folds", "2", "--trials", "2", "--epochs", "1", "--average-last", "1", "--device", "cpu")
    assert done.returncode == 1 and "target_false_per_hour 12.5 (here 10.0)" in done.stderr, done.stderr[-2000:]
    done = _train("hpo", "--data", tiny_dataset_with_pool, "--out", tmp_path / "hpo2", "--objective", "cv",
                  "--target-false-per-hour", "5")
    assert done.returncode == 2 and "give --objective field" in done.stderr
    done = _train("hpo", "--features", tmp_path / "pack.npz", "--out", tmp_path / "hpo3", "--objective", "field")
    assert done.returncode == 2 and "not a feature pack (--features)" in done.stderr
    done = _train("ensemble", "--out", out / "ensemble", "--data", tiny_dataset_with_pool)
    assert done.returncode == 1 and "searched the field objective, which keeps no models" in done.stderr


def test_a_trial_trained_on_every_fold_is_scored_not_pruned(tiny_dataset_with_pool):
    """The median rule stops a trial after a fold, never after the last: its training is done,
    and the field measure is only known then."""
    from training.data import load_pool, load_split, merge
    from training.hpo import SearchConfig, suggest
    from training.hpo_cv import FieldObjective

    train_split = load_split(tiny_dataset_with_pool, "train")
    data = merge(train_split, load_split(tiny_dataset_with_pool, "devel", train_split.labels))
    pool = load_pool(tiny_dataset_with_pool, data.labels)
    objective = FieldObjective(SearchConfig(objective="field", space="field", average_last=1, max_epochs=1,
                                            device="cpu"), data, pool, suggest, folds=2)

    class Trial(optuna.trial.FixedTrial):
        def __init__(self, params, prune: bool):
            super().__init__(params)
            self.prune, self.asked = prune, 0

        def should_prune(self):
            self.asked += 1
            return self.prune

    with pytest.raises(optuna.TrialPruned, match="fold 1"):
        objective(Trial(FOUND, prune=True))
    scored = Trial(FOUND, prune=False)
    assert 0.0 <= objective(scored) <= 1.0
    assert scored.asked == 1 and len(scored.user_attrs["held_out"]) == 8
