"""Ensembles across recipes and frontends: scored on the cv folds, thresholds on their own vote,
and bundled so that one log-mel + PCEN stream feeds members trained on either."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import soundfile
from typer.testing import CliRunner

from edgemon.analysis.bundle import load_bundle
from edgemon.analysis.ensemble import Ensemble
from edgemon.analysis.frontend import FrontendConfig, features
from training.augment import AugmentConfig
from training.cli import app
from training.cv import Recipe, cross_validate
from training.cv_ensemble import cv_ensemble, held_out_fold_uars
from training.data import load_split, merge
from training.errors import DataError
from training.model import ModelConfig
from training.train import OptimConfig

WINDOW = {"window_s": 0.5, "hop_s": 0.25}
LOGMEL, PCEN = FrontendConfig(), FrontendConfig(kind="pcen")


def _recipe(name: str, frontend: FrontendConfig) -> Recipe:
    return Recipe(name, ModelConfig(hidden=8, layers=1, tau=0.1),   # FIT's: the runs bundled with their point
                  OptimConfig(epochs=3, lr=0.003, lr_decay=1.0, gamma=0.0, batch_size=8, average_last=2),
                  AugmentConfig(), frontend)


def _load(dataset):
    def load(frontend: FrontendConfig):
        train_split = load_split(dataset, "train", frontend=frontend)
        return merge(train_split, load_split(dataset, "devel", train_split.labels, frontend))
    return load


@pytest.fixture(scope="module")
def cv_runs(tiny_dataset, tmp_path_factory):
    """Two averaged recipes, one on log-mel and one on PCEN, on the same folds; a copy of the
    first whose folds hold out other recorders; and one trained with another seed on the same folds."""
    root = tmp_path_factory.mktemp("cvens")
    load = _load(tiny_dataset)
    cross_validate([_recipe("mel", LOGMEL)], load(LOGMEL), k=2, out=root / "a", **WINDOW)
    cross_validate([_recipe("pcen", PCEN)], load(PCEN), k=2, out=root / "b", **WINDOW)
    shutil.copytree(root / "a", root / "c")
    summary = json.loads((root / "c" / "cv.json").read_text())
    folds = summary["folds"]
    other = [{**f, "validation_recorders": g["validation_recorders"]} for f, g in zip(folds, folds[::-1])]
    assert other != folds
    (root / "c" / "cv.json").write_text(json.dumps({**summary, "folds": other}))
    shutil.copytree(root / "a", root / "d")
    (root / "d" / "cv.json").write_text(json.dumps({**summary, "seed": 1}))
    return root


def test_one_member_reproduces_the_cv_runs_own_window_scores(cv_runs, tiny_dataset, tmp_path):
    alone = cv_ensemble([cv_runs / "a" / "mel"], _load(tiny_dataset), tmp_path / "alone.json", 0.1)
    recipe = json.loads((cv_runs / "a" / "cv.json").read_text())["recipes"]["mel"]
    for key in ("uar", "background_false_rate", "recall"):
        assert alone["windows_untuned"][key] == pytest.approx(recipe["windows_untuned"][key])
    assert alone["thresholds"] == pytest.approx(recipe["thresholds"])
    assert len(alone["fold_uar_untuned"]) == 2
    # Votes read back must be these fold models' and this prevalence's (a newcomer trial: another
    # seed's votes under the same recipe name, and a --prevalence that was recorded, not measured).
    votes = tmp_path / "alone.votes.npz"
    other = tmp_path / "other"
    shutil.copytree(cv_runs / "a", other)
    (other / "mel" / "fold0.onnx").write_bytes((cv_runs / "a" / "mel" / "fold1.onnx").read_bytes())
    with pytest.raises(DataError, match="votes of other fold models than these members'"):
        cv_ensemble([other / "mel"], _load(tiny_dataset), tmp_path / "o.json", 0.1, votes_from=votes)
    with pytest.raises(DataError, match="assembled at --prevalence 0.05, not 0.5"):
        cv_ensemble([cv_runs / "a" / "mel"], _load(tiny_dataset), tmp_path / "p.json", 0.1, votes_from=votes,
                    prevalence=0.5)
    again = cv_ensemble([cv_runs / "a" / "mel"], _load(tiny_dataset), tmp_path / "alone.json", 0.1, reuse_votes=True)
    assert again["thresholds"] == alone["thresholds"]
    from training.field_votes import FieldVotes   # votes from before they said either: taken, with a warning

    old = FieldVotes.load(votes)
    old.models_sha256, old.prevalence = "", None
    old.save(tmp_path / "old.votes.npz")
    taken = cv_ensemble([cv_runs / "a" / "mel"], _load(tiny_dataset), tmp_path / "old.json", 0.1,
                        votes_from=tmp_path / "old.votes.npz", prevalence=0.2)
    assert taken["prevalence"] == 0.2 and taken["thresholds"] == alone["thresholds"]


def test_mixed_frontend_ensemble_holds_its_stated_background_rate(cv_runs, tiny_dataset, tmp_path):
    members = [cv_runs / "a" / "mel", cv_runs / "b" / "pcen"]
    out = tmp_path / "both.json"
    result = cv_ensemble(members, _load(tiny_dataset), out, 0.1)
    assert json.loads(out.read_text())["thresholds"] == result["thresholds"]
    assert set(result["thresholds"]) == {"background", "call_high", "call_low"}
    tuned, untuned = result["windows_at_thresholds"], result["windows_untuned"]
    assert tuned["background_false_rate"] <= 0.1
    assert tuned["background_false_rate"] <= untuned["background_false_rate"]
    assert result["uar_mean"] == pytest.approx(np.mean(result["fold_uar_at_thresholds"]))
    assert "in-sample" in result["windows_at_thresholds_note"]   # the flattering figure says so
    assert [e["max_false_rate"] for e in result["tradeoff"]] == [0.01, 0.02, 0.05, 0.1, 0.2]
    field = result["field"]   # the field measure, as the recorder runs the pair over each fold
    assert field["at_point"]["false_per_hour"] <= max(5.0, field["untuned"]["false_per_hour"])
    assert field["untuned"]["calls"] == 18 and field["untuned"]["background_hours"] > 0
    assert set(field["operating_point"]["min_windows"]) == {"call_high", "call_low"}
    assert out.with_suffix(".votes.npz").is_file() and out.with_suffix(".reliability.png").is_file()
    again = cv_ensemble(members, _load(tiny_dataset), out, 0.1, target_false_per_hour=1e6, reuse_votes=True)
    assert again["field"]["untuned"] == field["untuned"]          # the same votes, read back
    assert again["field"]["at_point"]["recall"] >= field["at_point"]["recall"]   # a looser target


def test_the_held_out_recorders_pool_clips_join_the_field_measure(cv_runs, tiny_dataset_with_pool, tmp_path):
    """Grouped CV over train + devel + pool: each fold is measured on its recorders' pool clips too,
    and votes made without them are refused rather than misread."""
    from training.data import load_pool

    member = [cv_runs / "a" / "mel"]
    load = _load(tiny_dataset_with_pool)
    alone = cv_ensemble(member, load, tmp_path / "alone.json", 0.1)
    pooled = cv_ensemble(member, load, tmp_path / "pooled.json", 0.1,
                         pool=lambda labels: load_pool(tiny_dataset_with_pool, labels))
    assert (alone["held_out_pool_clips"], pooled["held_out_pool_clips"]) == (0, 6)
    assert (alone["clips_scored"], pooled["clips_scored"]) == ("train+devel", "train+devel+pool")
    before, after = alone["field"]["untuned"], pooled["field"]["untuned"]
    assert after["background_hours"] > before["background_hours"]       # 2 pool background clips more
    assert after["calls"] == before["calls"] + 4                        # and 4 pool calls
    assert len(pooled["field"]["untuned"]["per_class"]) == len(before["per_class"])
    with pytest.raises(DataError, match="votes of mel, not of mel, pcen"):   # a newcomer passed a trio's for a pair
        cv_ensemble(member + [cv_runs / "b" / "pcen"], load, tmp_path / "two.json", 0.1,
                    votes_from=tmp_path / "pooled.votes.npz", pool=lambda labels: load_pool(tiny_dataset_with_pool, labels))
    with pytest.raises(DataError, match=r"a cv run; give one of its recipe directories: .*mel"):
        cv_ensemble([cv_runs / "a"], load, tmp_path / "three.json", 0.1)
    with pytest.raises(DataError, match="made without the pool held out"):
        cv_ensemble(member, load, tmp_path / "again.json", 0.1, votes_from=tmp_path / "alone.votes.npz",
                    pool=lambda labels: load_pool(tiny_dataset_with_pool, labels))


def test_runs_of_other_seeds_on_the_same_folds_vote_together(cv_runs, tiny_dataset, tmp_path):
    """A seed ensemble: its members' cv runs hold out the same recorders in each fold."""
    alone = cv_ensemble([cv_runs / "a" / "mel"], _load(tiny_dataset), tmp_path / "alone.json", 0.1)
    both = cv_ensemble([cv_runs / "a" / "mel", cv_runs / "d" / "mel"], _load(tiny_dataset),
                       tmp_path / "both.json", 0.1)
    assert both["members"] == [str(cv_runs / "a" / "mel"), str(cv_runs / "d" / "mel")]
    assert both["seed"] == alone["seed"] == 0          # the folds and assembled recordings of the first
    assert both["field"]["untuned"]["background_hours"] == alone["field"]["untuned"]["background_hours"]


def test_members_from_other_folds_or_no_fold_models_are_refused(cv_runs, tiny_dataset, tmp_path):
    with pytest.raises(DataError, match="other folds"):
        cv_ensemble([cv_runs / "a" / "mel", cv_runs / "c" / "mel"], _load(tiny_dataset), tmp_path / "x.json", 0.1)
    with pytest.raises(DataError, match="no fold models"):
        cv_ensemble([cv_runs / "a" / "nothing"], _load(tiny_dataset), tmp_path / "x.json", 0.1)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cv.json").write_text('{"recipes": {"mel": {"members": []}}}')
    with pytest.raises(DataError, match="broken.*not a readable cv summary"):
        cv_ensemble([tmp_path / "broken" / "mel"], _load(tiny_dataset), tmp_path / "x.json", 0.1)
    result = CliRunner().invoke(app, ["cv-ensemble", str(tmp_path / "nowhere" / "mel"),
                                      "--data", str(tiny_dataset), "--out", str(tmp_path / "x.json")])
    assert result.exit_code == 1 and "nowhere" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
    # Found by a newcomer trial: --out naming the cv summary (or the votes it reads) overwrote it.
    summary = cv_runs / "a" / "cv.json"
    before = summary.read_bytes()
    with pytest.raises(DataError, match="cv.json exists and is not an earlier cv-ensemble result"):
        cv_ensemble([cv_runs / "a" / "mel"], _load(tiny_dataset), summary, 0.1)
    assert summary.read_bytes() == before
    # An --out it cannot write was found only after every fold model had run (a review).
    with pytest.raises(DataError, match=r"--out .*no-such-dir/x.json: cannot write there \(No such file"):
        cv_ensemble([cv_runs / "a" / "mel"], _load(tiny_dataset), tmp_path / "no-such-dir" / "x.json", 0.1)


FIT = ["--hidden", "8", "--layers", "1", "--epochs", "3", "--batch-size", "8", "--lr", "0.003",
       "--lr-decay", "1.0", "--gamma", "0", "--tau", "0.1", "--quiet", "--average-last", "2",
       "--window-s", "0.5", "--hop-s", "0.25"]


@pytest.fixture(scope="module")
def mixed_runs(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    for kind in ("logmel", "pcen"):
        result = CliRunner().invoke(app, ["fit", "--data", str(tiny_dataset), "--out", str(root / kind),
                                          "--frontend", kind, *FIT])
        assert result.exit_code == 0, result.output
    return root


def test_bundle_of_log_mel_and_pcen_runs_streams_both_and_each_member_reads_its_own(
        mixed_runs, cv_runs, tiny_dataset, tmp_path):
    from edgemon.analysis.analyzer import Analyzer

    thresholds = tmp_path / "both.json"
    cv_ensemble([cv_runs / "a" / "mel", cv_runs / "b" / "pcen"], _load(tiny_dataset), thresholds, 0.2)
    result = CliRunner().invoke(app, ["bundle", str(mixed_runs / "logmel"), str(mixed_runs / "pcen"),
                                      "--out", str(tmp_path / "bundle"), "--thresholds", str(thresholds)])
    assert result.exit_code == 0, result.output
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.frontend == FrontendConfig(kind="logmel_pcen") and len(bundle.members) == 2
    chosen = json.loads(thresholds.read_text())
    assert bundle.thresholds == chosen["field"]["operating_point"]["thresholds"]   # the field point's
    assert bundle.manifest["operating_point"] == chosen["field"]["operating_point"]
    assert bundle.manifest["calibration"] == chosen["field"]["calibration"]
    assert chosen["frontend_kinds"] == ["logmel", "pcen"]

    clip = tiny_dataset / "audio" / "call_high_test_2.flac"
    x = soundfile.read(clip, dtype="float32")[0]
    got = Ensemble(bundle).member_probs(features(x, bundle.frontend)[None])
    for m, (kind, frontend) in enumerate((("logmel", LOGMEL), ("pcen", PCEN))):
        own = ort.InferenceSession(str(mixed_runs / kind / "model.onnx"), providers=["CPUExecutionProvider"])
        want = own.run(["probs"], {"logmel": features(x, frontend)[None]})[0]
        np.testing.assert_allclose(got[m], want, atol=1e-5)
    assert len(Analyzer(bundle).analyse_file(clip, keep_votes=True).windows) >= 3

    # A point holds for the vote it was chosen on: runs of another recipe are refused, naming what
    # differs (a bundle of final runs took the point of another search trial's pair, silently).
    other = tmp_path / "wider"
    shutil.copytree(mixed_runs / "pcen", other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["hidden"] = 16
    (other / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["bundle", str(mixed_runs / "logmel"), str(other),
                                      "--out", str(tmp_path / "refused"), "--thresholds", str(thresholds)])
    assert result.exit_code == 1 and "model.hidden differ from pcen's" in result.output, result.output
    assert str(other) in result.output and not (tmp_path / "refused").exists()


def test_bundle_refuses_thresholds_for_other_labels_or_windows(mixed_runs, tmp_path):
    labels = ["background", "call_high", "call_low"]
    for content, message in (({"labels": ["a", "b"], "thresholds": {}, **WINDOW}, "labels"),
                             ({"labels": labels, "thresholds": {}, "window_s": 4.0, "hop_s": 2.0}, "windows"),
                             ({"labels": labels, "thresholds": {}, "frontend_kinds": ["pcen"], **WINDOW},
                              "members on"),
                             ({"labels": labels}, "not a cv-ensemble"),
                             # found in the staged manifest, the error named a temp directory (a review)
                             ({"labels": labels, "thresholds": {"background": "x"}, **WINDOW},
                              "thresholds must map each label to a finite number, not {'background': 'x'}")):
        path = tmp_path / "t.json"
        path.write_text(json.dumps(content))
        result = CliRunner().invoke(app, ["bundle", str(mixed_runs / "logmel"), "--out", str(tmp_path / "b"),
                                          "--thresholds", str(path)])
        assert result.exit_code == 1 and message in result.output and "t.json" in result.output
        assert not (tmp_path / "b").exists()
    # An --out that cannot be made was named by its staging directory (a review).
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(app, ["bundle", str(mixed_runs / "logmel"), "--out", str(tmp_path / "afile" / "b")])
    assert result.exit_code == 1 and f"--out {tmp_path / 'afile' / 'b'}: cannot write there (" in result.output
    assert ".b." not in result.output, result.output
    # A second newcomer trial: --data that is not a data set failed after the bundle was written.
    result = CliRunner().invoke(app, ["bundle", str(mixed_runs / "logmel"), "--out", str(tmp_path / "b"),
                                      "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "not a data set" in result.output and not (tmp_path / "b").exists()


def test_a_bundle_cut_short_while_completed_leaves_the_one_it_would_replace(mixed_runs, tiny_dataset, tmp_path,
                                                                         monkeypatch):
    """Found by a review: the new bundle replaced the old one before its reference windows were
    added, so a Ctrl-C there left a bundle with no self-check where a whole one had been."""
    import training.bundling

    out = tmp_path / "b"
    result = CliRunner().invoke(app, ["bundle", str(mixed_runs / "logmel"), "--out", str(out), "--data",
                                      str(tiny_dataset)])
    assert result.exit_code == 0, result.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training.bundling, "add_reference_windows", interrupted)
    result = CliRunner().invoke(app, ["bundle", str(mixed_runs / "logmel"), str(mixed_runs / "pcen"), "--out",
                                      str(out), "--data", str(tiny_dataset)])
    assert result.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_bundle(out).self_check is not None and sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_a_bundles_own_point_is_measured_again_and_rebundled_with_the_new_calibration(
        mixed_runs, cv_runs, tiny_dataset, tmp_path):
    """``cv-ensemble --at-point`` keeps the bundle's point (nothing chosen) and fits its calibration;
    ``rebundle`` gives the same members that point and calibration under a new id, and the recorder
    stores the same events with it."""
    from edgemon.analysis.analyzer import Analyzer

    members = [cv_runs / "a" / "mel", cv_runs / "b" / "pcen"]
    chosen = tmp_path / "chosen.json"
    cv_ensemble(members, _load(tiny_dataset), chosen, 0.2, target_false_per_hour=1e6)
    result = CliRunner().invoke(app, ["bundle", str(mixed_runs / "logmel"), str(mixed_runs / "pcen"),
                                      "--out", str(tmp_path / "parent"), "--thresholds", str(chosen),
                                      "--data", str(tiny_dataset)])
    assert result.exit_code == 0, result.output
    parent = load_bundle(tmp_path / "parent")
    again = tmp_path / "again.json"
    measured = cv_ensemble(members, _load(tiny_dataset), again, 0.2, target_false_per_hour=1.0,
                           votes_from=chosen.with_suffix(".votes.npz"), at_point=parent.path)
    point = measured["field"]["operating_point"]
    assert point["from_bundle"] == parent.bundle_id and point["target_false_per_hour"] == 1e6   # the bundle's own
    for other in ("windows", "gate"):   # what choosing anew gives beside it must be by the point's own rules
        with pytest.raises(DataError, match="hysteresis"):
            cv_ensemble(members, _load(tiny_dataset), tmp_path / "x.json", 0.2, target_false_per_hour=1.0,
                        votes_from=chosen.with_suffix(".votes.npz"), at_point=parent.path, rules=other)
    assert point["thresholds"] == parent.thresholds
    result = CliRunner().invoke(app, ["rebundle", str(parent.path), "--thresholds", str(again),
                                      "--out", str(tmp_path / "child")])
    assert result.exit_code == 0, result.output
    child = load_bundle(tmp_path / "child")
    assert [m.sha256 for m in child.members] == [m.sha256 for m in parent.members]
    assert child.bundle_id != parent.bundle_id and child.manifest["rebundled_from"] == parent.bundle_id
    assert child.thresholds == parent.thresholds and child.manifest["calibration"] == measured["field"]["calibration"]
    assert child.self_check is not None and child.manifest["self_check"] == parent.manifest["self_check"]
    Ensemble(child)   # its reference windows pass the self-check with the same members
    from edgemon.analysis.bundle_text import format_description
    from edgemon.analysis.ensemble import describe_bundle
    text = format_description(describe_bundle(child.path)[0])
    assert "at this point, measured again on every grouped-CV fold" in text
    assert f"the members of bundle {parent.bundle_id}; operating point and calibration from again.json" in text
    clip = tiny_dataset / "audio" / "call_high_test_2.flac"
    events = lambda b: [(e.label, e.start_s, e.end_s) for e in Analyzer(b).analyse_file(clip).events]
    assert events(child) == events(parent)
    # a point that can never store a class says so (a newcomer found a gate level of 1.01 unannounced)
    off = json.loads(again.read_text())
    silent = parent.labels[1]
    off["field"]["operating_point"]["thresholds"][silent] = 1.0
    (tmp_path / "off.json").write_text(json.dumps(off))
    result = CliRunner().invoke(app, ["rebundle", str(parent.path), "--thresholds", str(tmp_path / "off.json"),
                                      "--out", str(tmp_path / "off")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{"):])["never_stored"] == [silent]
    # refused in one line, nothing written: a result without a field point, a result for other members
    (tmp_path / "plain.json").write_text(json.dumps({"labels": list(parent.labels), "thresholds": {}}))
    one = json.loads(again.read_text()) | {"frontend_kinds": ["logmel"]}
    (tmp_path / "one.json").write_text(json.dumps(one))
    other = json.loads(again.read_text())
    other["field"]["operating_point"]["from_bundle"] = "another-0123"
    (tmp_path / "other.json").write_text(json.dumps(other))
    unfielded = json.loads(again.read_text()) | {"field": None}
    (tmp_path / "unfielded.json").write_text(json.dumps(unfielded))
    renamed = json.loads(again.read_text()) | {"members": ["elsewhere/h192", "elsewhere/pcen"]}
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    for bad, message in (("plain.json", "not a cv-ensemble result"), ("unfielded.json", "no field operating point"),
                         ("one.json", "measured 1 member"),
                         ("other.json", "measured at the point of bundle another-0123"),
                         ("renamed.json", "measured recipes h192, pcen; the bundle's members were chosen with")):
        result = CliRunner().invoke(app, ["rebundle", str(parent.path), "--thresholds", str(tmp_path / bad),
                                          "--out", str(tmp_path / "nothing")])
        assert result.exit_code == 1 and message in result.output and bad in result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "nothing").exists()


def test_a_folds_window_uar_is_scored_at_thresholds_chosen_on_the_other_folds():
    # Fold 0's background holds call votes at 0.6 and its call votes at 0.7; fold 1's background
    # votes at 0.4 and its call at 0.9. Chosen on both folds (no false window allowed), the threshold
    # sits just over 0.6 and every clip is right: fold 0 was tuned on its own background. Chosen on
    # fold 1 alone it sits just over 0.4, and fold 0's background clip is stored as a call.
    labels = ("background", "call")
    clip = np.array([0, 0, 1, 2, 2, 3])
    windows = {"clip": clip, "winner": np.array([1, 1, 1, 1, 0, 1]),
               "confidence": np.array([0.6, 0.6, 0.7, 0.4, 0.9, 0.9], np.float32)}
    targets = np.array([0, 1, 0, 1])
    folds = [(np.array([2, 3]), np.array([0, 1])), (np.array([0, 1]), np.array([2, 3]))]
    fold_of = np.array([0, 0, 0, 1, 1, 1])
    assert held_out_fold_uars(windows, fold_of, folds, targets, labels, 0.01) == [0.5, 1.0]


def test_votes_made_in_other_batches_than_the_recorder_s_are_not_taken_silently(cv_runs, tiny_dataset, tmp_path,
                                                                                  caplog):
    """A review of the field measure's batches: votes are now made in the recorder's batches of 8
    (int8 members' votes depend on their batch), but votes saved before, in batches of 16, were
    read back by --reuse-votes and --votes as if they were the recorder's, without a word."""
    from training.field_votes import FieldVotes

    member = cv_runs / "a" / "mel"
    cv_ensemble([member], _load(tiny_dataset), tmp_path / "new.json", 0.1)
    votes = FieldVotes.load(tmp_path / "new.votes.npz")
    assert votes.batch_size == 8
    votes.batch_size = 16
    votes.save(tmp_path / "sixteen.votes.npz")
    with pytest.raises(DataError, match="votes made in batches of 16 windows, the recorder's are 8"):
        cv_ensemble([member], _load(tiny_dataset), tmp_path / "s.json", 0.1, votes_from=tmp_path / "sixteen.votes.npz")
    votes.batch_size = None   # a file from before: taken, and said
    votes.save(tmp_path / "old.votes.npz")
    cv_ensemble([member], _load(tiny_dataset), tmp_path / "o.json", 0.1, votes_from=tmp_path / "old.votes.npz")
    assert "votes made before the field measure voted in the recorder's batches of 8" in caplog.text
