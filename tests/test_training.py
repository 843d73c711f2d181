"""The training path end to end on small real audio, plus its data checks."""

import contextlib
import json
import shutil
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgemon.analysis.bundle import load_bundle
from training.augment import AugmentConfig, apply_gain, augment, mask, mix_background
from training.cli import app
from training.data import load_split
from training.errors import DataError
from training.model import ModelConfig
from training.train import OptimConfig, balanced_indices, train

runner = CliRunner()
TINY_FIT = ["--hidden", "16", "--layers", "1", "--epochs", "4", "--batch-size", "8", "--lr", "0.003",
            "--lr-decay", "1.0", "--gamma", "0", "--tau", "0.1", "--quiet"]


def test_fit_cli_writes_a_complete_run_directory(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(out), *TINY_FIT])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "history.json", "metrics.json", "checkpoint.pt", "model.onnx",
                 "confusion_devel.png", "confusion_test.png", "windowed_metrics.json", "summary.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"devel", "test"}
    # Four epochs separate two tones from noise.
    assert metrics["devel"]["uar"] >= 0.6
    assert len(json.loads((out / "history.json").read_text())) == 4
    bundle = load_bundle(out / "bundle")
    assert bundle.members[0].devel_uar == pytest.approx(metrics["devel"]["uar"])
    # Complete as `bundle` makes one (a review: no names, a ceiling of 1, no self-check).
    assert bundle.manifest["trained_on"] == ["train"] and "label_names" in bundle.manifest
    assert 0 < bundle.manifest["confidence_max"] <= 1 and (out / "bundle" / "reference.flac").is_file()


def test_same_seed_same_model_different_seed_different_model(tiny_dataset):
    train_split = load_split(tiny_dataset, "train")
    devel = load_split(tiny_dataset, "devel", train_split.labels)
    model = ModelConfig(hidden=8, layers=1, n_classes=3)

    def run(seed):
        return train(model, OptimConfig(epochs=2, batch_size=8, lr=0.01, seed=seed), AugmentConfig(),
                     train_split, devel, progress=False).history

    a, b, c = run(3), run(3), run(4)
    assert [h["loss"] for h in a] == [h["loss"] for h in b]
    assert [h["loss"] for h in a] != [h["loss"] for h in c]


def test_balanced_resampling_draws_classes_evenly():
    targets = np.array([0] * 90 + [1] * 9 + [2] * 1)
    draws = np.concatenate([balanced_indices(targets, np.random.default_rng(s)) for s in range(50)])
    share = np.bincount(targets[draws], minlength=3) / len(draws)
    np.testing.assert_allclose(share, 1 / 3, atol=0.02)


def test_each_epoch_trains_at_lr_times_beta_to_the_epochs_before_and_records_it(tiny_dataset):
    """The paper multiplies the learning rate by beta each epoch: epoch 1 at lr, epoch e at
    lr * beta^(e-1). history.json recorded the lr after the epoch's decay (epoch 1 showed lr * beta)."""
    train_split = load_split(tiny_dataset, "train")
    devel = load_split(tiny_dataset, "devel", train_split.labels)
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", spy)
        history = train(ModelConfig(hidden=8, layers=1, n_classes=3),
                        OptimConfig(epochs=3, batch_size=64, lr=0.01, lr_decay=0.5, seed=0, device="cpu"),
                        AugmentConfig(), train_split, devel, progress=False, log_epochs=False).history
    per_epoch = len(seen) // 3
    trained_at = [seen[e * per_epoch] for e in range(3)]
    assert trained_at == pytest.approx([0.01, 0.005, 0.0025])
    assert [h["lr"] for h in history] == pytest.approx(trained_at)


def test_masks_cover_the_requested_share_and_at_least_one_frame():
    rng = np.random.default_rng(0)
    x = np.zeros((10, 128), np.float32)
    x[:] = np.arange(1, 11)[:, None]
    masked = mask(x, p_fm=0.25, p_tm=0.01, rng=rng)
    fill = x.min()
    assert (masked == fill).all(axis=0).sum() == 32  # 25 % of 128 bins over all frames...
    assert ((masked == fill).all(axis=1)).sum() >= 1  # ...and at least one whole frame


def test_grouped_masks_hide_the_same_band_in_each_view():
    x = np.concatenate([np.full((20, 128), -5.0), np.full((20, 128), 3.0)], axis=1).astype(np.float32)
    x[:, :128] += np.arange(128) * 0.01  # distinct values, so the fill is each view's minimum
    x[:, 128:] += np.arange(128) * 0.01
    masked = mask(x, p_fm=0.1, p_tm=0.0, rng=np.random.default_rng(1), groups=2)
    low = (masked[:, :128] != x[:, :128]).all(axis=0)
    high = (masked[:, 128:] != x[:, 128:]).all(axis=0)
    assert 12 <= low.sum() <= 13 and (low == high).all()  # 10 % of 128 bins (one may hold the minimum)
    assert masked[:, :128].min() == x[:, :128].min() and masked[:, 128:].min() == x[:, 128:].min()


def test_mixing_hits_the_snr_and_gain_is_exact():
    rng = np.random.default_rng(0)
    floor = 1e-6
    call = np.log(np.full((50, 128), 1e-2) + floor).astype(np.float32)
    noise = np.log(np.full((30, 128), 1.0) + floor).astype(np.float32)
    mixed = mix_background(call, noise, snr_db=10.0, floor=floor, rng=rng)
    added = np.exp(mixed) - floor - 1e-2
    np.testing.assert_allclose(added, 1e-3, rtol=1e-3)  # noise power = call power / 10
    louder = apply_gain(call, 6.0, floor)
    np.testing.assert_allclose(np.exp(louder) - floor, 1e-2 * 10 ** 0.6, rtol=1e-4)


def test_field_augment_crops_to_the_window():
    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).standard_normal((300, 128)).astype(np.float32)
    config = AugmentConfig(crop_frames=125, time_shift=True, p_mix=1.0, gain_db=6.0)
    out = augment(x, config, rng, backgrounds=[x[:40]])
    assert out.shape == (125, 128) and out.dtype == np.float32 and np.isfinite(out).all()


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_file_in_label_list_names_it(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    (data / "audio" / "call_low_devel_1.flac").unlink()
    with pytest.raises(DataError, match="call_low_devel_1.flac"):
        load_split(data, "devel")


def test_a_clip_in_a_class_folder_is_named_with_its_folder(tiny_dataset, tmp_path):
    """A set kept as a folder per class (the README's orangutan/clip01.wav): a missing, mislabelled
    or twice-listed clip was named without its folder, so the user looked for it in audio/ itself."""
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    (data / "audio" / "low").mkdir()
    for name in ("call_low_devel_1.flac", "call_low_devel_2.flac"):
        (data / "audio" / name).rename(data / "audio" / "low" / name)
    csv = data / "lab" / "devel.csv"
    for name in ("call_low_devel_1.flac", "call_low_devel_2.flac"):
        csv.write_text(csv.read_text().replace(name, f"low/{name}"))
    (data / "audio" / "low" / "call_low_devel_1.flac").unlink()
    with pytest.raises(DataError, match="first: 'low/call_low_devel_1.flac'"):
        load_split(data, "devel")
    rows = [r for r in csv.read_text().splitlines() if not r.startswith("low/call_low_devel_1.flac,")]
    csv.write_text("\n".join(rows).replace("low/call_low_devel_2.flac,call_low", "low/call_low_devel_2.flac,zebra") + "\n")
    with pytest.raises(DataError, match="devel.csv: low/call_low_devel_2.flac: label 'zebra'"):
        load_split(data, "devel", ("background", "call_high", "call_low"))


def test_unknown_label_names_the_clip(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    csv = data / "lab" / "devel.csv"
    csv.write_text(csv.read_text().replace("call_high_devel_0.flac,call_high", "call_high_devel_0.flac,zebra"))
    train_split = load_split(data, "train")
    with pytest.raises(DataError, match="devel.csv: call_high_devel_0.flac: label 'zebra'"):
        load_split(data, "devel", train_split.labels)


def test_unreadable_clip_is_an_error_naming_it_via_the_cli(tiny_dataset, tmp_path):
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    (data / "audio" / "background_train_2.flac").write_bytes(b"garbage")
    result = runner.invoke(app, ["fit", "--data", str(data), "--out", str(tmp_path / "r"), *TINY_FIT])
    assert result.exit_code == 1
    assert "background_train_2.flac" in result.output and "Traceback" not in result.output


def test_tiny_silent_and_stereo_clips_train(tiny_dataset, tmp_path):
    import soundfile

    data = copy_dataset(tiny_dataset, tmp_path / "d")
    soundfile.write(data / "audio" / "background_train_0.flac", np.zeros(100, np.float32), 16000)  # < 1 frame pair
    soundfile.write(data / "audio" / "background_train_1.flac", np.zeros(8000, np.float32), 16000)  # silent
    stereo = np.random.default_rng(0).standard_normal((48000, 2)).astype(np.float32) * 0.01
    soundfile.write(data / "audio" / "background_train_3.flac", stereo, 48000)  # stereo, 48 kHz
    split = load_split(data, "train")
    assert len(split.features[0]) == 1 and np.isfinite(split.features[1]).all()
    result = runner.invoke(app, ["fit", "--data", str(data), "--out", str(tmp_path / "r"), *TINY_FIT])
    assert result.exit_code == 0, result.output


def test_checkpoint_averaging_returns_the_mean_of_the_last_epochs(tiny_dataset, monkeypatch):
    import torch

    import training.train as train_module

    train_split = load_split(tiny_dataset, "train")
    devel = load_split(tiny_dataset, "devel", train_split.labels)
    states = []
    original = train_module._accumulate

    def spy(total, model):  # remember each averaged epoch's weights
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return original(total, model)

    monkeypatch.setattr(train_module, "_accumulate", spy)
    optim = OptimConfig(epochs=3, batch_size=8, lr=0.01, seed=1, average_last=2)
    averaged = train(ModelConfig(hidden=8, layers=1, n_classes=3), optim, AugmentConfig(), train_split, devel,
                     progress=False)
    assert len(states) == 2  # epochs 2 and 3
    for name, value in averaged.model.state_dict().items():
        torch.testing.assert_close(value, (states[0][name] + states[1][name]) / 2)
    assert averaged.best_epoch == 3  # nothing chosen on devel


@contextlib.contextmanager
def caplog_at_warning():
    """The messages logged at warning or above inside the block (CliRunner leaves logging alone)."""
    import logging

    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    handler = Keep(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        yield said
    finally:
        logging.getLogger().removeHandler(handler)


def test_fit_cli_with_pcen_and_averaging_makes_a_bundle_the_recorder_runs(tiny_dataset, tmp_path):
    from edgemon.analysis.analyzer import Analyzer

    out = tmp_path / "run"
    args = [a if a != "4" else "3" for a in TINY_FIT]  # 3 epochs, the last 2 averaged
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(out), *args,
                                 "--frontend", "logmel_pcen", "--average-last", "2", "--window-s", "0.5",
                                 "--hop-s", "0.25", "--f-max", "4000"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] == 3  # the averaged model, not an epoch chosen on devel
    bundle = load_bundle(out / "bundle")
    assert bundle.frontend.kind == "logmel_pcen" and bundle.frontend.n_features == 256
    assert bundle.frontend.f_max == 4000   # the band edge travels inside the model
    analysis = Analyzer(bundle).analyse_file(tiny_dataset / "audio" / "call_high_test_2.flac", keep_votes=True)
    assert len(analysis.windows) >= 3


def test_fit_with_devel_trains_on_both_lists_and_centres_bands_in_the_export(tiny_dataset, tmp_path, monkeypatch):
    import onnx

    import training.runs

    seen = []
    real_train = training.runs.train

    def spy(model_config, optim, aug, train_split, devel_split, **kwargs):
        seen.append((len(train_split), len(devel_split)))
        return real_train(model_config, optim, aug, train_split, devel_split, **kwargs)

    monkeypatch.setattr(training.runs, "train", spy)
    out = tmp_path / "run"
    args = [a if a != "4" else "3" for a in TINY_FIT]
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(out), *args,
                                 "--average-last", "2", "--with-devel", "--centre-bands"])
    assert result.exit_code == 0, result.output
    n_train, n_devel = len(load_split(tiny_dataset, "train")), len(load_split(tiny_dataset, "devel"))
    assert seen == [(n_train + n_devel, n_devel)]
    assert json.loads((out / "config.json").read_text())["trained_on"] == "train+devel"
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["model_config"])["centre_bands"] is True
    with caplog_at_warning() as said:
        result = runner.invoke(app, ["bundle", str(out), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["trained_on"] == ["train+devel"]  # its devel score is not a held-out one
    # With no --thresholds every window's winner is stored: said (a newcomer trial saw 580 an hour).
    assert json.loads(result.stdout)["operating_point"] is None
    assert any("has no operating point: its thresholds are 0" in m for m in said), said


def test_a_run_with_a_damaged_config_or_metrics_file_is_refused_by_bundle_naming_it(tiny_dataset, tmp_path):
    """A review: `bundle` of a run whose config.json was `[]` or whose metrics.json was `{}` gave a
    traceback, and a truncated config.json an error naming no file."""
    run = tmp_path / "run"
    assert runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(run), *TINY_FIT]).exit_code == 0
    for name, text in (("config.json", '{"labels": ['), ("config.json", "[]"), ("metrics.json", "{}"),
                       ("metrics.json", '{"devel": {}, "test": {}}')):
        damaged = shutil.copytree(run, tmp_path / f"damaged-{name}-{len(text)}")
        (damaged / name).write_text(text)
        result = runner.invoke(app, ["bundle", str(damaged), "--out", str(tmp_path / "b")])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert f"error: {damaged / name}: not a finished run's {name} (" in result.output
        assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("f_max", ["9000", "0", "-5"])
def test_a_band_edge_outside_the_spectrum_is_refused(tiny_dataset, tmp_path, f_max):
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), *TINY_FIT,
                                 "--f-max", f_max])
    assert result.exit_code == 2 and "--f-max" in result.output and not (tmp_path / "r").exists(), result.output


def test_fit_with_devel_without_averaging_is_refused(tiny_dataset, tmp_path):
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"),
                                 "--with-devel", *TINY_FIT])
    assert result.exit_code == 1 and "needs --average-last" in result.output
    assert not (tmp_path / "r").exists()


def test_mixing_other_recorders_without_the_field_recipe_is_refused(tiny_dataset, tmp_path):
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"),
                                 "--mix-other-recorders", *TINY_FIT])
    assert result.exit_code == 2 and "--mix-other-recorders needs --field" in result.output
    assert not (tmp_path / "r").exists()


def test_background_pools_hold_other_recorders_only_when_asked(tiny_dataset):
    from training.train import background_pools

    split = load_split(tiny_dataset, "train")
    source = split.augmentable
    bg = [i for i, t in enumerate(split.targets) if split.labels[t] == "background"]
    recorder_of = {id(source[i]): split.clips[i].recorder for i in bg}
    everywhere = background_pools(split, source, AugmentConfig(p_mix=0.5))
    elsewhere = background_pools(split, source, AugmentConfig(p_mix=0.5, mix_other_recorders=True))
    assert all([id(x) for x in pool] == [id(source[i]) for i in bg] for pool in everywhere)  # as before
    for clip, pool in zip(split.clips, elsewhere):
        heard_at = {recorder_of[id(x)] for x in pool}
        assert heard_at and clip.recorder not in heard_at
    one_recorder = split.subset([i for i, c in enumerate(split.clips) if c.recorder == "S0"])
    pools = background_pools(one_recorder, one_recorder.augmentable, AugmentConfig(p_mix=0.5, mix_other_recorders=True))
    assert all(len(pool) == sum(one_recorder.labels[t] == "background" for t in one_recorder.targets) for pool in pools)


def test_fit_never_overwrites_a_trained_run(tiny_dataset, tmp_path):
    """Found by a newcomer trial: `fit --out EXISTING_RUN` overwrote its model and metrics."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"kept": true}')
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(out), *TINY_FIT])
    assert result.exit_code == 1 and "holds a trained run already (metrics.json)" in result.output
    assert (out / "metrics.json").read_text() == '{"kept": true}' and sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_a_second_command_into_an_out_directory_in_use_is_refused(tiny_dataset, tmp_path):
    """A review: two `fit` runs into one --out at once both ended 0 and one model was lost; two
    `cv` runs kept only one's recipes in cv.json."""
    from training.out_dirs import holding_out_dir

    out = tmp_path / "run"
    with holding_out_dir(out):                  # a first command, still training
        for command in (["fit", *TINY_FIT], ["baseline"], ["cv", "--recipe", "baseline"]):
            result = runner.invoke(app, [*command, "--data", str(tiny_dataset), "--out", str(out)])
            assert result.exit_code == 1, result.output
            assert "another edgemon-train command is writing there now" in result.output
        assert sorted(p.name for p in out.iterdir()) == [".edgemon-train.lock"]
    assert not out.exists()                     # made for nothing, gone with its lock
    result = runner.invoke(app, ["baseline", "--data", str(tiny_dataset), "--out", str(out)])
    assert result.exit_code == 0 and (out / "summary.json").is_file() and not (out / ".edgemon-train.lock").exists()


def test_baseline_never_overwrites_a_run_and_a_bad_data_dir_leaves_nothing(tiny_dataset, tmp_path):
    """Found by a newcomer trial: `baseline --out FIT_RUN` replaced the run's metrics with the
    SVM's, and its bundle then reported them; `fit`/`baseline` made --out before finding --data."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"kept": true}')
    result = runner.invoke(app, ["baseline", "--data", str(tiny_dataset), "--out", str(out)])
    assert result.exit_code == 1 and "holds a trained run already (metrics.json)" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    for command in (["baseline"], ["fit", *TINY_FIT]):
        result = runner.invoke(app, [*command, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "new")])
        assert result.exit_code == 1 and not (tmp_path / "new").exists(), result.output


def test_a_typo_in_a_train_label_is_refused_before_any_audio_is_read(tiny_dataset, tmp_path):
    """Found by a newcomer trial: a train label in no other list became a class of its own."""
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    csv = data / "lab" / "train.csv"
    csv.write_text(csv.read_text().replace("call_high_train_0.flac,call_high", "call_high_train_0.flac,call_hihg"))
    result = runner.invoke(app, ["baseline", "--data", str(data), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "label 'call_hihg' (1 clip(s)) is in no other list" in result.output
    assert "train.csv" in result.output and not (tmp_path / "r").exists()


def test_a_clip_in_two_lists_or_twice_in_one_is_refused_before_any_audio_is_read(tiny_dataset, tmp_path):
    """A newcomer trial: a test.csv copied from train.csv was accepted and scored as held out (its
    inflated UAR kept in the model as test_uar); a clip listed twice with two labels taught both."""
    for name, change in (("test", lambda train, test: train),
                         ("train", lambda train, test: train + train.splitlines()[1].replace(",call_high", ",noise")
                          .replace(",background", ",call_high") + "\n")):
        data = copy_dataset(tiny_dataset, tmp_path / name)
        train, test = (data / "lab" / "train.csv"), (data / "lab" / "test.csv")
        (train if name == "train" else test).write_text(change(train.read_text(), test.read_text()))
        result = runner.invoke(app, ["fit", "--data", str(data), "--out", str(tmp_path / f"r-{name}"), *TINY_FIT])
        said = "twice in train.csv" if name == "train" else "in train.csv and test.csv"
        assert result.exit_code == 1 and f"is listed {said}: each clip belongs in one list" in result.output, \
            result.output
        assert not (tmp_path / f"r-{name}").exists()


def test_a_pool_clip_listed_in_devel_or_test_is_refused_before_any_audio_is_read(tiny_dataset, tmp_path):
    """A review: lab/pool.csv joins training (fit, and every cv fold's training side less its held-out
    recorders) and was never checked against the held-out lists. A pool row naming a test clip was
    trained on and then scored as held out (test_uar), one naming a devel clip chose the epoch it was
    trained on, and one naming a devel clip under another recorder joined the training side of the
    very fold that held that clip out."""
    for held in ("test", "devel"):
        data = copy_dataset(tiny_dataset, tmp_path / held)
        rows = (data / "lab" / f"{held}.csv").read_text().splitlines()
        # the held-out clip again in the pool, under a recorder no fold holds out with it
        (data / "lab" / "pool.csv").write_text(rows[0] + "\n" + rows[2].replace(",S1,", ",S9,") + "\n")
        command = ["fit", *TINY_FIT] if held == "test" else ["cv", "--recipe", "paper", "--epochs", "1",
                                                             "--folds", "2"]
        result = runner.invoke(app, [*command, "--data", str(data), "--out", str(tmp_path / f"r-{held}")])
        assert result.exit_code == 1, result.output
        assert f"is listed in {held}.csv and pool.csv: each clip belongs in one list" in result.output, result.output
        assert not (tmp_path / f"r-{held}").exists()
    # a pool of train clips (as the tiny pooled set has) is what the pool is for: still taken
    from training.data import check_train_labels
    pooled = copy_dataset(tiny_dataset, tmp_path / "pooled")
    train_rows = (pooled / "lab" / "train.csv").read_text().splitlines()
    (pooled / "lab" / "pool.csv").write_text("\n".join(train_rows[:3]) + "\n")
    check_train_labels(pooled, ("devel", "test"))


def test_a_pool_that_is_not_used_is_not_checked_against_the_held_out_lists(tiny_dataset, tmp_path):
    """A review of the pool check: it ran whatever --no-pool said, so ``fit --no-pool`` (and
    ``report``, ``ensemble``, which never read the pool) refused a data set for a pool.csv naming a
    test clip, with no word of --no-pool: the leak it guards against needs the pool in training."""
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    rows = (data / "lab" / "test.csv").read_text().splitlines()
    (data / "lab" / "pool.csv").write_text(rows[0] + "\n" + rows[1] + "\n")
    result = runner.invoke(app, ["fit", *TINY_FIT, "--no-pool", "--data", str(data), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["fit", *TINY_FIT, "--data", str(data), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 1 and "in test.csv and pool.csv" in result.output, result.output


def test_lists_a_run_would_fail_on_are_refused_before_any_audio_is_read(tiny_dataset, tmp_path):
    """Found by a review: a row with too few cells was a traceback; a background class under
    another name, and a hop longer than the window, were refused only after the whole training."""
    data = copy_dataset(tiny_dataset, tmp_path / "d")
    csv = data / "lab" / "train.csv"
    text = csv.read_text()
    csv.write_text(text + "\n\n" + text.splitlines()[1].split(",")[0] + "\n")   # blank lines, then a short row
    result = runner.invoke(app, ["fit", "--data", str(data), "--out", str(tmp_path / "r"), *TINY_FIT])
    line = len(text.splitlines()) + 3
    assert result.exit_code == 1 and f"train.csv: line {line} has no label" in result.output, result.output
    for name in ("train", "devel", "test"):
        listed = data / "lab" / f"{name}.csv"
        listed.write_text(listed.read_text().replace(",background", ",noise"))
    csv.write_text(csv.read_text().splitlines(keepends=True)[0] + "".join(text.splitlines(keepends=True)[1:])
                   .replace(",background", ",noise"))
    for command in (["fit", *TINY_FIT], ["cv", "--recipe", "baseline"],
                    ["hpo", "--trials", "1", "--epochs", "1", "--device", "cpu"]):
        result = runner.invoke(app, [command[0], "--data", str(data), "--out", str(tmp_path / "r"), *command[1:]])
        assert result.exit_code == 1 and "no 'background' label" in result.output, result.output
        assert not (tmp_path / "r").exists() or command[0] == "hpo"   # hpo makes its study's directory first
    one = copy_dataset(tiny_dataset, tmp_path / "one")
    for name in ("train", "devel"):
        listed = one / "lab" / f"{name}.csv"
        lines = listed.read_text().splitlines()
        column = lines[0].split(",").index("recorder")
        listed.write_text("\n".join([lines[0]] + [",".join(c if i != column else "R1" for i, c in enumerate(row.split(",")))
                                                  for row in lines[1:]]) + "\n")
    result = runner.invoke(app, ["cv", "--recipe", "baseline", "--data", str(one), "--out", str(tmp_path / "r1")])
    assert result.exit_code == 1 and "names the one recorder 'R1'" in result.output, result.output
    for command in ("fit", "cv"):
        result = runner.invoke(app, [command, "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), "--hop-s", "10"])
        assert result.exit_code == 2 and "--hop-s 10 is longer than --window-s 4" in result.output, result.output
        assert not (tmp_path / "r").exists()


def test_a_label_list_saved_by_a_spreadsheet_is_read_and_one_not_utf8_is_named(tiny_dataset, tmp_path):
    """A byte-order mark (Excel's CSV) hid the 'filename' column; a Latin-1 list failed naming no file."""
    from training.data import read_label_list

    data = copy_dataset(tiny_dataset, tmp_path / "d")
    csv = data / "lab" / "train.csv"
    plain = read_label_list(csv, data / "audio")
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())
    assert read_label_list(csv, data / "audio") == plain
    csv.write_bytes(csv.read_bytes()[3:].replace(b"call_high_train_0", b"call_high_train_\xe90", 1))
    result = runner.invoke(app, ["baseline", "--data", str(data), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "train.csv: not a UTF-8 CSV label list" in result.output, result.output


def test_a_label_spelt_with_combining_accents_in_one_list_is_the_same_label(tiny_dataset, tmp_path):
    """Pyrrhura_ñ typed as one letter in train.csv and as n + a combining tilde in devel.csv and
    label_names.csv (names taken from a Mac's folder names): refused as "label 'Pyrrhura_ñ' is not
    one of [..., 'Pyrrhura_ñ']", two spellings no reader can tell apart (a trial with its own species)."""
    import unicodedata

    from training.data import check_train_labels
    from training.species import read_label_names

    data = copy_dataset(tiny_dataset, tmp_path / "d")
    composed, decomposed = unicodedata.normalize("NFC", "Pyrrhura_ñ"), unicodedata.normalize("NFD", "Pyrrhura_ñ")
    for split, spelling in (("train", composed), ("devel", decomposed), ("test", decomposed)):
        csv = data / "lab" / f"{split}.csv"
        csv.write_text(csv.read_text(encoding="utf-8").replace(",call_low,", f",{spelling},"), encoding="utf-8")
    (data / "lab" / "label_names.csv").write_text(f"label,scientific,common\n{decomposed},Pyrrhura molinae,conure\n",
                                                  encoding="utf-8")
    check_train_labels(data, ("devel", "test"))
    train_split = load_split(data, "train")
    assert train_split.labels == ("background", composed, "call_high")
    assert load_split(data, "devel", train_split.labels).labels == train_split.labels
    assert list(read_label_names(data, train_split.labels)) == [composed]


def test_a_recorder_spelt_with_combining_accents_in_one_list_is_the_same_recorder(tiny_dataset, tmp_path):
    """A review of the NFC labels: the recorder column, from the same folder names, was left as
    spelt, so 'Estación' composed in train.csv and decomposed in devel.csv were two recorders to
    grouped CV, which could train on one's train clips and hold out its devel clips as unseen."""
    import unicodedata

    from training.data import merge

    data = copy_dataset(tiny_dataset, tmp_path / "d")
    composed, decomposed = unicodedata.normalize("NFC", "Estación"), unicodedata.normalize("NFD", "Estación")
    for split, spelling in (("train", composed), ("devel", decomposed)):
        csv = data / "lab" / f"{split}.csv"
        csv.write_text(csv.read_text(encoding="utf-8").replace(",S1,", f",{spelling},"), encoding="utf-8")
    train_split = load_split(data, "train")
    both = merge(train_split, load_split(data, "devel", train_split.labels))
    assert {c.recorder for c in both.clips} == {"S0", composed}


def test_early_stopping_beside_averaging_is_refused(tiny_dataset, tmp_path):
    """--patience stopped early and kept the best devel epoch: --average-last was dropped without a word."""
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), *TINY_FIT,
                                 "--average-last", "2", "--patience", "1"])
    assert result.exit_code == 2 and "--patience and --average-last" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("option, value", [("--batch-size", "-4"), ("--tau", "-1"), ("--lr", "0"), ("--gamma", "-2"),
                                           ("--p-fm", "2"), ("--lr-decay", "0"), ("--hop-s", "0"), ("--layers", "0"),
                                           ("--patience", "-1"), ("--average-last", "-3"),
                                           ("--recorder-adversary", "-1"), ("--recorder-adversary", "nan"),
                                           ("--recorder-adversary", "inf"), ("--tau", "inf"), ("--lr", "inf"),
                                           ("--gamma", "inf"), ("--weight-decay", "inf"), ("--window-s", "inf"),
                                           ("--crop-s", "inf"), ("--hop-s", "inf"), ("--hard-negatives", "inf")])
def test_impossible_training_values_are_refused_before_any_training(tiny_dataset, tmp_path, option, value):
    """Found by a newcomer trial: each trained (some for nothing, loss NaN) and reported success,
    or failed only when the bundle was built after all the epochs."""
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), *TINY_FIT,
                                 option, value])
    assert result.exit_code == 2 and option in result.output and not (tmp_path / "r").exists(), result.output


def test_averaging_more_epochs_than_are_trained_is_refused(tiny_dataset, tmp_path):
    result = runner.invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), *TINY_FIT,
                                 "--average-last", "50"])
    assert result.exit_code == 2 and "--average-last 50 is more than --epochs" in result.output


def test_an_ensemble_of_no_trials_is_refused_in_one_line(tmp_path):
    """Found by a newcomer trial: --top 0 ended in an IndexError traceback, --top -1 dropped a trial."""
    for top in ("0", "-1"):
        result = runner.invoke(app, ["ensemble", "--top", top, "--out", str(tmp_path / "e")])
        assert result.exit_code == 2 and "--top" in result.output and "Traceback" not in result.output


def test_ctrl_c_while_the_training_side_loads_is_quiet():
    """Ctrl-C in the second or two torch takes to load printed a traceback of the imports."""
    import signal
    import subprocess
    import sys
    import time

    # Timed from just before main(): at 0.05 s torch is loading; later ones land inside torch's C++
    # loading, where a KeyboardInterrupt once aborted the process (exit -6, "terminate called ...").
    # Once loaded, Ctrl-C ends the command as Python ends on it (quietly, -2 by SIGINT) or after it (0).
    for delay, ends in ((0.05, {130}), (0.4, {130, 0, -2}), (0.8, {130, 0, -2}), (1.2, {130, 0, -2})):
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.argv = ['edgemon-train', '--help']; "
                                  "from training.entry import main; print('main', flush=True); main()"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "main\n"
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
        assert "Traceback" not in err and "terminate" not in err and child.returncode in ends, (
            delay, child.returncode, err[-1500:])


def test_an_averaging_recipe_stopped_before_its_averaged_epochs_keeps_the_last_epoch(tiny_dataset):
    """`fit --with-devel --average-last 5` stopped in epoch 4 of 20 kept the best devel epoch: chosen
    on devel, which it trains on, in a run whose config says its weights are averaged (a trial).
    Nothing is chosen on devel: it keeps the last finished epoch, as an average of one would."""
    train_split = load_split(tiny_dataset, "train")
    devel = load_split(tiny_dataset, "devel", train_split.labels)
    model = ModelConfig(hidden=8, layers=1, n_classes=3)

    def stop_after_3(epoch, record):
        if epoch == 3:
            raise KeyboardInterrupt   # as a Ctrl-C between epochs 3 and 4

    def optim(epochs, average_last):
        return OptimConfig(epochs=epochs, batch_size=8, lr=0.01, seed=0, device="cpu", average_last=average_last)

    stopped = train(model, optim(20, 5), AugmentConfig(), train_split, devel, on_epoch=stop_after_3,
                    progress=False, log_epochs=False, keep_on_interrupt=True)
    three = train(model, optim(3, 1), AugmentConfig(), train_split, devel, progress=False, log_epochs=False)
    assert stopped.stopped_in == 4 and stopped.best_epoch == 3
    uars = [h["devel_uar"] for h in stopped.history]
    assert uars.index(max(uars)) + 1 != 3, uars   # the best devel epoch is another: the test tells them apart
    for name, value in three.model.state_dict().items():
        assert torch.equal(stopped.model.state_dict()[name], value), name


@pytest.mark.parametrize("finished", [0, 1])
def test_an_averaging_recipe_stopped_while_an_epoch_is_scored_keeps_only_finished_epochs(tiny_dataset, monkeypatch,
                                                                                         finished):
    """Found in a review: the weights an interrupt keeps before the averaged epochs were copied
    before the epoch was scored on devel, so a Ctrl-C during epoch 1's scoring kept them with no
    epoch finished and ended in IndexError (``history[-1]``), and one during epoch 2's kept epoch
    2's weights as "epoch 1"."""
    import training.train as train_module

    train_split = load_split(tiny_dataset, "train")
    devel = load_split(tiny_dataset, "devel", train_split.labels)
    model = ModelConfig(hidden=8, layers=1, n_classes=3)

    def optim(epochs, average_last):
        return OptimConfig(epochs=epochs, batch_size=8, lr=0.01, seed=0, device="cpu", average_last=average_last)

    real, scored = train_module.predict, []

    def predict(*args, **kwargs):
        if len(scored) == finished:
            raise KeyboardInterrupt   # as a Ctrl-C while epoch ``finished + 1`` is scored on devel
        scored.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "predict", predict)
    if not finished:   # nothing finished to keep: the interrupt goes on
        with pytest.raises(KeyboardInterrupt):
            train(model, optim(20, 5), AugmentConfig(), train_split, devel, progress=False, log_epochs=False,
                  keep_on_interrupt=True)
        return
    stopped = train(model, optim(20, 5), AugmentConfig(), train_split, devel, progress=False, log_epochs=False,
                    keep_on_interrupt=True)
    monkeypatch.undo()
    one = train(model, optim(1, 1), AugmentConfig(), train_split, devel, progress=False, log_epochs=False)
    assert stopped.stopped_in == 2 and stopped.best_epoch == 1 and len(stopped.history) == 1
    for name, value in one.model.state_dict().items():
        assert torch.equal(stopped.model.state_dict()[name], value), name


def _fit_signalled(tiny_dataset, out, fit_args, how: str, ready, poll_s: float = 0.05,
                   before=None) -> tuple[int, str, str]:
    """`fit` into ``out`` in a child process, sent signal ``how`` once ``ready(its stderr so far)``
    holds (or it ends; ``before(child)`` checked first): its exit status, stderr and stdout."""
    import signal
    import subprocess
    import sys

    log = out.parent / "stderr"
    with open(log, "w") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "training", "fit", "--data", str(tiny_dataset), "--out",
                                  str(out), *fit_args], stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 300
            while not ready(log.read_text()) and time.monotonic() < deadline and child.poll() is None:
                time.sleep(poll_s)
            if before is not None:
                before(child)
            child.send_signal(getattr(signal, how))
            stdout, _ = child.communicate(timeout=300)
        finally:
            if child.poll() is None:
                child.kill()
    return child.returncode, log.read_text(), stdout


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_fit_stopped_in_an_epoch_keeps_what_the_finished_epochs_gave(tiny_dataset, tmp_path, how):
    """A newcomer trial: Ctrl-C at epoch 16 of 300 left a run directory holding only config.json
    (the best epoch, 4, gone, and no resume), and SIGTERM likewise. The run is written whole with
    the finished epochs' model, says so, and exits 130."""
    out = tmp_path / "run"
    fit = [*TINY_FIT[:TINY_FIT.index("--epochs")], "--epochs", "500", *TINY_FIT[TINY_FIT.index("--epochs") + 2:]]
    returncode, said, summary = _fit_signalled(tiny_dataset, out, fit, how, lambda log: "epoch 2 loss" in log)
    assert returncode == 130, said[-2000:]
    last = said.strip().splitlines()[-1]
    assert last.startswith("error: stopped in epoch ") and f"{out} holds the model of the" in last, last
    written = json.loads((out / "summary.json").read_text())
    assert written["stopped_in_epoch"] >= 3 and written["epochs_done"] == written["stopped_in_epoch"] - 1
    assert json.loads(summary)["stopped_in_epoch"] == written["stopped_in_epoch"]
    assert len(json.loads((out / "history.json").read_text())) == written["epochs_done"]
    assert (out / "bundle" / "manifest.json").is_file()


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_fit_stopped_once_training_has_ended_writes_the_run_whole_first(tiny_dataset, tmp_path, how):
    """A trial: Ctrl-C or SIGTERM after the last epoch, while devel and test were scored and the run
    written, ended the command at once (exit 130, no word): the trained model was lost, or the run
    left without its summary, windowed scores or bundle, and the same command then refused the
    directory as a trained run. The signal is held until the run is written; a second would not be."""
    out = tmp_path / "run"

    def still_writing(child) -> None:
        assert child.poll() is None and not (out / "summary.json").exists(), "signalled while the run was written"

    # history.json: the first file written once training has ended
    returncode, said, summary = _fit_signalled(tiny_dataset, out, TINY_FIT, how,
                                               lambda log: (out / "history.json").exists(), 0.01, still_writing)
    assert returncode == 130 and "Traceback" not in said, said[-2000:]
    last = said.strip().splitlines()[-1]
    assert last.startswith("error: signal ") and f"{out} was written: it was written whole first" in last, last
    for name in ("metrics.json", "model.onnx", "windowed_metrics.json", "summary.json", "bundle/manifest.json"):
        assert (out / name).is_file(), name
    written = json.loads((out / "summary.json").read_text())
    assert "stopped_in_epoch" not in written and len(json.loads((out / "history.json").read_text())) == 4
    assert json.loads(summary)["windowed"] == written["windowed"]


def test_a_command_without_data_says_it_reads_the_borneo_set(tmp_path, caplog):
    """A newcomer trial: `fit` without --data trained on the Borneo set beside the checkout and
    said nothing, so a model of Borneo's calls passed for one of the user's own."""
    from typer.testing import CliRunner

    from training.cli import app

    caplog.set_level("INFO", logger="training")
    CliRunner().invoke(app, ["score", str(tmp_path / "no-bundle")])
    said = [r.getMessage() for r in caplog.records if "no --data" in r.getMessage()]
    assert said == ["no --data: the Borneo set at ../shared/data/borneo (give --data DIR for your own clips)"]
    caplog.clear()
    CliRunner().invoke(app, ["score", str(tmp_path / "no-bundle"), "--data", str(tmp_path)])
    assert not [r for r in caplog.records if "no --data" in r.getMessage()]


def test_a_reference_window_from_a_class_folder_is_named_with_its_folder(tiny_dataset, tmp_path):
    """A newcomer trial: the bundle's self-check named its reference clip 'AM11_054.wav', not
    'siamang/AM11_054.wav' as the list and the data set have it."""
    from training.bundling import pick_reference_windows

    data = copy_dataset(tiny_dataset, tmp_path / "d")
    csv = data / "lab" / "train.csv"
    (data / "audio" / "low").mkdir()
    moved = [r.split(",")[0] for r in csv.read_text().splitlines()[1:] if ",call_low" in r]
    for name in moved:
        (data / "audio" / name).rename(data / "audio" / "low" / name)
        csv.write_text(csv.read_text().replace(f"{name},", f"low/{name},"))
    _, chosen = pick_reference_windows(data, ("background", "call_low"), 1.0, 16000)
    assert chosen[1].source.startswith("low/") and chosen[1].source[4:] in moved
    assert "/" not in chosen[0].source
