"""Grouped cross-validation: no recorder on both sides of a fold; every recipe on the same folds."""

import json
from pathlib import Path

import numpy as np

from training.augment import AugmentConfig
from training.cv import Recipe, cross_validate, grouped_folds
from training.data import load_split, merge
from training.model import ModelConfig
from training.train import OptimConfig


def test_folds_never_share_a_recorder_and_cover_every_clip(tiny_dataset):
    data = merge(load_split(tiny_dataset, "train"), load_split(tiny_dataset, "devel"))
    folds = grouped_folds(data, k=2)
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen) == list(range(len(data)))
    for tr, va in folds:
        assert not {data.clips[i].recorder for i in tr} & {data.clips[i].recorder for i in va}


def test_more_folds_than_recorders_says_how_many_folds_there_are(tiny_dataset, caplog):
    """Each fold holds out a recorder: --folds 10 on fewer recorders made fewer folds, silently."""
    data = merge(load_split(tiny_dataset, "train"), load_split(tiny_dataset, "devel"))
    recorders = len({c.recorder for c in data.clips})
    with caplog.at_level("WARNING"):
        folds = grouped_folds(data, k=recorders + 3)
    assert len(folds) == recorders
    assert f"{recorders + 3} folds asked, {recorders} recorders: {recorders} folds" in caplog.text


def test_folds_of_clips_that_name_no_recorder_are_refused(tiny_dataset):
    """Each such clip was a group of its own: clip-level CV, reported as grouped (a trial)."""
    import dataclasses

    import pytest

    from training.errors import DataError

    split = load_split(tiny_dataset, "train")
    nameless = dataclasses.replace(split, clips=[dataclasses.replace(c, recorder="") if i % 2 else c
                                                 for i, c in enumerate(split.clips)])
    with pytest.raises(DataError, match=rf"{len(split.clips) // 2} of {len(split.clips)} clips name no recorder"):
        grouped_folds(nameless, 2)


def test_folds_of_clips_from_one_recorder_are_refused(tiny_dataset):
    """They fell back to folds within the recorder: clip-level CV, reported as grouped (a review)."""
    import dataclasses

    import pytest

    from training.errors import DataError

    split = load_split(tiny_dataset, "train")
    one = dataclasses.replace(split, clips=[dataclasses.replace(c, recorder="R1") for c in split.clips])
    with pytest.raises(DataError, match="every clip names the one recorder 'R1'"):
        grouped_folds(one, 2)


def test_cross_validate_scores_baseline_and_network_on_the_same_folds(tiny_dataset, tmp_path):
    train_split = load_split(tiny_dataset, "train")
    data = merge(train_split, load_split(tiny_dataset, "devel", train_split.labels))
    net = Recipe("net", ModelConfig(hidden=8, layers=1), OptimConfig(epochs=3, lr=0.003, lr_decay=1.0, gamma=0.0,
                                                                     batch_size=8), AugmentConfig())
    summary = cross_validate([Recipe("baseline"), net], data, k=2, out=tmp_path)
    assert set(summary["recipes"]) == {"baseline", "net"}
    assert len(summary["recipes"]["net"]["mean_curve"]) == 3
    assert 1 <= summary["recipes"]["net"]["epoch"] <= 3
    for r in summary["recipes"].values():
        assert len(r["fold_uar"]) == 2 and 0 <= r["uar_mean"] <= 1
        assert np.array(r["confusion"]).sum() == len(data)   # pooled over folds: every clip once
    assert summary["recipes"]["baseline"]["uar_mean"] > 0.6   # tones vs noise, across recorders
    assert json.loads((tmp_path / "cv.json").read_text())["k"] == 2
    assert (tmp_path / "cv_confusion_net.png").is_file()


def test_averaged_pcen_recipe_keeps_fold_models_thresholds_and_bundles(tiny_dataset, tmp_path):
    """Fold models of an averaged recipe become a bundle whose thresholds hold the background rate."""
    from edgemon.analysis.bundle import load_bundle
    from edgemon.analysis.frontend import FrontendConfig
    from training.bundling import bundle_cv
    from training.runs import score_bundle

    pcen = FrontendConfig(kind="logmel_pcen")  # PCEN, and log-mel beside it: both code paths
    train_split = load_split(tiny_dataset, "train", frontend=pcen)
    data = merge(train_split, load_split(tiny_dataset, "devel", train_split.labels, pcen))
    assert data.mel is not None and data.features[0].shape == (len(data.mel[0]), 256)
    net = Recipe("avg", ModelConfig(hidden=8, layers=1),
                 OptimConfig(epochs=4, lr=0.003, lr_decay=1.0, gamma=0.0, batch_size=8, average_last=2),
                 AugmentConfig(p_mix=0.5, gain_db=6.0, p_fm=0.1, p_tm=0.1, p_r=0.5), pcen)
    summary = cross_validate([net], data, k=2, out=tmp_path / "cv", window_s=0.5, hop_s=0.25,
                             max_false_rate=0.1)
    r = summary["recipes"]["avg"]
    assert r["epoch"] is None and r["averaged_last"] == 2 and r["frontend"] == "logmel_pcen"
    assert r["members"] == ["fold0.onnx", "fold1.onnx"]
    assert r["windows_at_thresholds"]["background_false_rate"] <= 0.1
    assert r["windows_at_thresholds"]["background_false_rate"] <= r["windows_untuned"]["background_false_rate"]
    assert set(r["thresholds"]) == set(data.labels)

    bundle = load_bundle(bundle_cv(tmp_path / "cv", "avg", tmp_path / "bundle")["bundle"])
    # Its fold models learnt from devel: `score --split devel` says so (a review: shown as held out).
    assert bundle.manifest["trained_on"] == ["train+devel"] * 2
    point = r["field"]["operating_point"]
    assert len(bundle.members) == 2 and bundle.frontend == pcen and bundle.thresholds == point["thresholds"]
    assert bundle.manifest["operating_point"] == point and set(point["min_windows"]) == set(data.labels[1:])
    assert r["field"]["at_point"]["false_per_hour"] <= r["field"]["untuned"]["false_per_hour"]
    looser = bundle_cv(tmp_path / "cv", "avg", tmp_path / "looser", max_false_rate=0.5)["thresholds"]
    assert all(looser[k] <= r["thresholds"][k] for k in looser) and looser != r["thresholds"]
    # A data set without a clip of one label for the reference windows: refused, and the bundle it
    # would replace left as it was (a newcomer trial found it replaced, without its self-check).
    import shutil

    import pytest

    from training.errors import DataError

    lacking = tmp_path / "lacking"
    shutil.copytree(tiny_dataset, lacking)
    rows = (lacking / "lab" / "train.csv").read_text().splitlines()
    (lacking / "lab" / "train.csv").write_text("\n".join(r for r in rows if f",{data.labels[-1]}," not in r) + "\n")
    before = {p.name: p.read_bytes() for p in (tmp_path / "looser").iterdir()}
    with pytest.raises(DataError, match=f"no train clip of '{data.labels[-1]}'"):
        bundle_cv(tmp_path / "cv", "avg", tmp_path / "looser", reference_data=lacking)
    assert {p.name: p.read_bytes() for p in (tmp_path / "looser").iterdir()} == before
    _recorder_computes_what_training_saw(bundle, tiny_dataset / "audio" / "call_high_train_5.flac")
    scored = score_bundle(tmp_path / "bundle", tiny_dataset, "test")
    assert 0 <= scored["at_thresholds"]["uar"] <= 1 and scored["clips"] > 0
    assert scored["at_thresholds"]["background_false_rate"] <= scored["untuned"]["background_false_rate"]
    field = scored["field"]
    assert field["operating_point"]["min_windows"] == point["min_windows"]
    assert field["at_point"]["background_hours"] > 0 and 0 <= field["at_point"]["clip_uar"] <= 1


def test_bundle_cv_refuses_a_recipe_without_fold_models(tiny_dataset, tmp_path):
    import pytest

    from training.bundling import bundle_cv
    from training.errors import DataError

    data = merge(load_split(tiny_dataset, "train"), load_split(tiny_dataset, "devel"))
    cross_validate([Recipe("baseline")], data, k=2, out=tmp_path)
    with pytest.raises(DataError, match="no fold models"):
        bundle_cv(tmp_path, "baseline", tmp_path / "b")


def _recorder_computes_what_training_saw(bundle, clip):
    """The recorder's streaming frontend (PCEN state carried across blocks) gives the same window
    votes as the one-shot features training scores with."""
    import soundfile

    from edgemon.analysis.ensemble import Ensemble
    from edgemon.analysis.decisions import apply_thresholds
    from edgemon.analysis.frontend import features
    from edgemon.analysis.analyzer import Analyzer
    from edgemon.analysis.windows import WindowSpec, cut_windows

    x = soundfile.read(clip, dtype="float32")[0]
    analysis = Analyzer(bundle).analyse_blocks((x[i:i + 700] for i in range(0, len(x), 700)), keep_votes=True)
    spec = WindowSpec.from_seconds(bundle.window_s, bundle.hop_s, bundle.frontend)
    windows, starts = cut_windows(features(x, bundle.frontend), spec)
    votes = Ensemble(bundle).vote(windows)
    expected = dict(zip(starts.tolist(), apply_thresholds(votes.winner, votes.confidence, bundle.labels,
                                                          bundle.thresholds, 0).tolist()))
    streamed = {v.start_frame: v.label for v in analysis.windows}
    assert len(streamed) >= 3 and all(expected[s] == label for s, label in streamed.items() if s in expected)
    assert len(set(streamed) & set(expected)) >= 3


def test_cli_refuses_an_unknown_frontend_and_a_missing_bundle_in_one_line(tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from training.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["cv", "--data", str(tiny_dataset), "--frontend", "cqt", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--frontend" in result.output and "cqt" in result.output
    result = runner.invoke(app, ["score", str(tmp_path / "nowhere"), "--data", str(tiny_dataset)])
    assert result.exit_code == 1 and "nowhere" in result.output
    assert len(result.output.strip().splitlines()) == 1
    for split in ("tset", "../lab/test"):   # a typo, and a path that ran
        result = runner.invoke(app, ["score", "edgemon/models/default", "--data", str(tiny_dataset), "--split", split])
        assert result.exit_code == 2 and "choose one of train, devel, test" in result.output


def test_network_options_with_only_the_baseline_are_refused(tiny_dataset, tmp_path):
    """`cv --recipe baseline --recorder-adversary 1` ran the plain baseline without a word."""
    from typer.testing import CliRunner

    from training.cli import app

    for option in (["--recorder-adversary", "1"], ["--hidden", "32"], ["--centre-bands"], ["--frontend", "pcen"],
                   ["--f-max", "4000"]):
        result = CliRunner().invoke(app, ["cv", "--data", str(tiny_dataset), "--recipe", "baseline", *option,
                                          "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and option[0] in result.output and "baseline" in result.output, result.output
        assert not (tmp_path / "o").exists()


def test_cv_cli_averaged_field_recipe_with_its_own_window(tiny_dataset, tmp_path):
    from typer.testing import CliRunner

    from training.cli import app

    result = CliRunner().invoke(app, [
        "cv", "--data", str(tiny_dataset), "--recipe", "field", "--folds", "2", "--epochs", "2",
        "--hidden", "8", "--layers", "1", "--average-last", "1", "--window-s", "0.5", "--hop-s", "0.25",
        "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cv.json").read_text())
    r = summary["recipes"]["field-avg1-h8l1-w0.5"]
    assert r["window_s"] == 0.5 and r["hop_s"] == 0.25 and len(r["members"]) == 2
    assert (tmp_path / "field-avg1-h8l1-w0.5" / "fold1.onnx").is_file()


def test_pool_joins_each_folds_training_side_less_its_held_out_recorders(tiny_dataset, tiny_dataset_with_pool, tmp_path):
    from training.cv import fold_training, validation_recorders
    from training.data import load_pool

    data_dir = tiny_dataset_with_pool
    train_split = load_split(data_dir, "train")
    data = merge(train_split, load_split(data_dir, "devel", train_split.labels))
    pool = load_pool(data_dir, data.labels)
    assert len(pool) == 6 and {c.recorder for c in pool.clips} == {"S0", "S1"}
    folds = grouped_folds(data, k=2)
    for (tr, va), held in zip(folds, validation_recorders(data, folds)):
        training = fold_training(data.subset(tr), pool, held)
        assert len(training) == len(tr) + 3            # the other recorder's pool clips only
        assert not {c.recorder for c in training.clips} & set(held)
    summary = cross_validate([Recipe("baseline")], data, k=2, out=tmp_path / "cv",
                             pool=lambda frontend: load_pool(data_dir, data.labels, frontend))
    assert summary["pool"] == {"clips": 6, "used_per_fold": [3, 3]}
    # the folds' clip scores are train + devel's alone: every scored clip once
    assert np.array(summary["recipes"]["baseline"]["confusion"]).sum() == len(data)
    assert load_pool(tiny_dataset, data.labels) is None   # a data set without a pool trains as before


def test_the_field_measure_holds_out_each_pool_clip_in_its_recorders_fold(tiny_dataset_with_pool):
    """Grouped CV over train + devel + pool: a pool clip is measured in the fold that kept it out of
    training, and trains the other folds (``fold_training``'s split, seen from the measure)."""
    from training.cv import fold_training, held_out_with_pool, validation_recorders
    from training.data import load_pool

    data_dir = tiny_dataset_with_pool
    train_split = load_split(data_dir, "train")
    data = merge(train_split, load_split(data_dir, "devel", train_split.labels))
    pool = load_pool(data_dir, data.labels)
    folds = grouped_folds(data, k=2)
    measured, measured_folds = held_out_with_pool(data, pool, folds)
    assert len(measured.clips) == len(data.clips) + len(pool.clips)
    held_out = np.concatenate([va for _, va in measured_folds])
    assert sorted(held_out) == list(range(len(measured.clips)))          # every clip measured once
    for (tr, va), (mtr, mva), held in zip(folds, measured_folds, validation_recorders(data, folds)):
        assert list(mva) == sorted(mva) and set(va) <= set(mva) and set(tr) <= set(mtr)
        assert {measured.clips[i].recorder for i in mva} == set(held)   # only the fold's own recorders
        assert not set(mtr) & set(mva)
        trained_on = fold_training(data.subset(tr), pool, held)
        assert sorted(str(measured.clips[i].path) for i in mtr) == sorted(str(c.path) for c in trained_on.clips)
    assert held_out_with_pool(data, None, folds) == (data, folds)


def test_a_calibrated_bundle_declares_the_top_of_its_curves_as_its_ceiling():
    """With calibration the stored confidence is the calibrated one: its ceiling is the top of
    the curves (an uncalibrated call class keeps the raw vote's ceiling)."""
    from training.bundling import stored_confidence_max

    labels = ("background", "a", "b")
    curves = {"a": {"x": [0.1, 0.6], "y": [0.05, 0.97]}, "b": {"x": [0.2, 0.5], "y": [0.1, 0.8]}}
    assert stored_confidence_max({"calibration": curves}, 0.62, labels) == 0.97
    assert stored_confidence_max({"calibration": {"b": curves["b"]}}, 0.62, labels) == 0.8
    assert stored_confidence_max({"calibration": {"b": {"x": [0.2], "y": [0.4]}}}, 0.62, labels) == 0.62
    assert stored_confidence_max({}, 0.62, labels) == 0.62
    assert stored_confidence_max({}, None, labels) is None


def test_a_second_cv_run_into_one_directory_keeps_the_first_runs_recipes(tiny_dataset, tmp_path):
    """Found by a newcomer trial: a second cv into the same --out replaced cv.json, and the first
    run's fold models could no longer be bundled; --folds 100 ran as many folds as recorders but
    recorded 100."""
    import pytest

    from training.errors import DataError

    train_split = load_split(tiny_dataset, "train")
    data = merge(train_split, load_split(tiny_dataset, "devel", train_split.labels))
    net = Recipe("net", ModelConfig(hidden=8, layers=1), OptimConfig(epochs=2, lr=0.003, lr_decay=1.0, gamma=0.0,
                                                                     batch_size=8), AugmentConfig())
    first = cross_validate([Recipe("baseline")], data, k=100, out=tmp_path)
    assert first["k"] == 2 == len(first["folds"])             # two recorders: two folds, recorded as run
    both = cross_validate([net], data, k=100, out=tmp_path)
    assert set(both["recipes"]) == {"baseline", "net"}
    assert json.loads((tmp_path / "cv.json").read_text())["recipes"]["baseline"] == first["recipes"]["baseline"]
    with pytest.raises(DataError, match="already scores baseline"):
        cross_validate([Recipe("baseline")], data, k=2, out=tmp_path)
    with pytest.raises(DataError, match="holds a cv run on other folds"):
        cross_validate([Recipe("other")], data, k=2, seed=7, out=tmp_path)


def test_cv_and_hpo_refuse_an_out_that_holds_another_commands_work(tiny_dataset, tmp_path):
    """A newcomer trial: cv and hpo wrote into a bundle, a fit run or the data directory, and the
    next `bundle` into that bundle deleted the cv run with it; cv --out FILE said [Errno 17]."""
    import shutil

    import pytest

    from training.errors import DataError
    from training.hpo import SearchConfig, run_search

    train_split = load_split(tiny_dataset, "train")
    data = merge(train_split, load_split(tiny_dataset, "devel", train_split.labels))
    bundle = tmp_path / "bundle"
    shutil.copytree(Path(__file__).resolve().parents[1] / "edgemon" / "models" / "default", bundle)
    fit_run = tmp_path / "fit"
    fit_run.mkdir()
    (fit_run / "metrics.json").write_text("{}")
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for out, said in ((bundle, "holds a bundle already"), (fit_run, "holds a trained run already"),
                      (tiny_dataset, "is a data directory"), (a_file, "is a file, not a run directory")):
        with pytest.raises(DataError, match=said):
            cross_validate([Recipe("baseline")], data, k=2, out=out)
        with pytest.raises(DataError, match=said):
            run_search(SearchConfig(n_trials=1), f"sqlite:///{tmp_path / 'unused.db'}", "s", out, train_split,
                       train_split)
    assert not (bundle / "cv.json").exists() and not (tiny_dataset / "cv.json").exists()
    cv_run = tmp_path / "cv"
    cross_validate([Recipe("baseline")], data, k=2, out=cv_run)
    with pytest.raises(DataError, match="holds a cv run already"):
        run_search(SearchConfig(n_trials=1), f"sqlite:///{tmp_path / 'unused.db'}", "s", cv_run, train_split,
                   train_split)


def test_a_fold_without_held_out_background_is_refused_before_any_training(tiny_dataset, tmp_path):
    """A newcomer's --folds 10 trained every fold for hours, then stopped: one recorder (S13) has
    no background clip, and the field measure of averaged recipes needs one per fold."""
    import pytest

    from training.errors import DataError

    train_split = load_split(tiny_dataset, "train")
    data = merge(train_split, load_split(tiny_dataset, "devel", train_split.labels))
    background = data.labels.index("background")
    keep = [i for i, (c, t) in enumerate(zip(data.clips, data.targets)) if not (t == background and c.recorder == "S1")]
    lacking = data.subset(np.array(keep))
    net = Recipe("avg", ModelConfig(hidden=8, layers=1),
                 OptimConfig(epochs=2, lr=0.003, lr_decay=1.0, gamma=0.0, batch_size=8, average_last=1), AugmentConfig())
    with pytest.raises(DataError, match=r"fold \d of 2 holds out recorder\(s\) S1 with no background clip"):
        cross_validate([net], lacking, k=2, out=tmp_path / "cv")
    assert not (tmp_path / "cv").exists()                       # nothing trained, nothing written
    cross_validate([Recipe("baseline")], lacking, k=2, out=tmp_path / "plain")   # no field measure: runs


def test_a_ctrl_c_in_a_later_recipe_keeps_the_finished_ones_and_a_second_run_adds_the_rest(tiny_dataset, tmp_path,
                                                                                            monkeypatch):
    """A newcomer trial: a Ctrl-C during the second recipe left no cv.json (it was written after the
    last recipe), so the first recipe's hours were lost and bundle-cv refused its fold models."""
    import pytest

    import training.cv

    train_split = load_split(tiny_dataset, "train")
    data = merge(train_split, load_split(tiny_dataset, "devel", train_split.labels))
    net = Recipe("net", ModelConfig(hidden=8, layers=1), OptimConfig(epochs=2, lr=0.003, lr_decay=1.0, gamma=0.0,
                                                                     batch_size=8), AugmentConfig())
    real = training.cv.run_fold

    def ctrl_c_in_net(recipe, *args, **kwargs):
        if recipe.name == "net":
            raise KeyboardInterrupt
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(training.cv, "run_fold", ctrl_c_in_net)
    with pytest.raises(KeyboardInterrupt):
        cross_validate([Recipe("baseline"), net], data, k=2, out=tmp_path)
    assert set(json.loads((tmp_path / "cv.json").read_text())["recipes"]) == {"baseline"}
    monkeypatch.setattr(training.cv, "run_fold", real)
    summary = cross_validate([net], data, k=2, out=tmp_path)          # the rest, on the same folds
    assert set(summary["recipes"]) == {"baseline", "net"}
    assert set(json.loads((tmp_path / "cv.json").read_text())["recipes"]) == {"baseline", "net"}


def test_a_class_heard_by_one_recorder_only_is_named(tiny_dataset, caplog):
    """A rare species of one's own, every clip from one recorder: the fold holding that recorder out
    trained without the class, its held-out clips were all scored by a model that never saw one,
    and cv-ensemble then said only "never stored ... choose a higher --target-false-per-hour" (a
    trial with its own species)."""
    import dataclasses

    split = merge(load_split(tiny_dataset, "train"), load_split(tiny_dataset, "devel"))
    with caplog.at_level("WARNING"):
        grouped_folds(split, 2)
    assert "trains without it" not in caplog.text
    low = split.labels.index("call_low")
    one = dataclasses.replace(split, clips=[dataclasses.replace(c, recorder="S0") if t == low else c
                                            for c, t in zip(split.clips, split.targets)])
    with caplog.at_level("WARNING"):
        grouped_folds(one, 2)
    assert "'call_low': every clip held out in fold" in caplog.text and "(S0)" in caplog.text
