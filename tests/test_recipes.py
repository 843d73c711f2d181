"""Training recipes in one place: Table 2, the field preset, recipe names, seconds as frames."""

import optuna
import pytest

from edgemon.analysis.frontend import FrontendConfig
from edgemon.analysis.windows import WindowSpec
from training.augment import AugmentConfig
from training.cv import cv_recipes
from training.hpo import suggest
from training.model import ModelConfig
from training.recipes import FIELD, HOP_S, PAPER, WINDOW_S, recipe_name, seconds_to_frames
from training.train import OptimConfig


def test_the_searchs_first_trial_is_the_setting_fit_and_cv_train_by_default():
    """Table 2 as trial parameters, through the search space, gives the configs' own defaults:
    the search's starting point, ``fit``'s defaults and the ``paper`` cv recipe are one setting."""
    model, optim, aug = suggest(optuna.trial.FixedTrial(PAPER.trial_params()), "paper", FrontendConfig(), WINDOW_S)
    assert model == ModelConfig()
    assert OptimConfig(**optim) == OptimConfig()
    assert aug == AugmentConfig()
    paper = cv_recipes(["paper"], FrontendConfig(), epochs=300, seed=0)[0]
    assert (paper.name, paper.model, paper.optim, paper.augment) == ("paper", ModelConfig(), OptimConfig(), AugmentConfig())


def test_the_field_search_space_starts_where_the_field_recipe_trains():
    params = {**PAPER.trial_params(), **FIELD.trial_params()}
    _, _, aug = suggest(optuna.trial.FixedTrial(params), "field", FrontendConfig(), WINDOW_S)
    field = cv_recipes(["field"], FrontendConfig(), epochs=30, seed=0)[0]
    assert aug == field.augment
    assert (aug.time_shift, aug.p_mix, aug.snr_db, aug.gain_db) == (True, 0.5, (0.0, 20.0), 6.0)
    assert aug.crop_frames == 125 and field.name == "field"


def test_seconds_to_frames_is_the_recorders_window_length():
    for frontend in (FrontendConfig(), FrontendConfig(kind="pcen")):
        for seconds in (0.5, 3.0, WINDOW_S, 10.0):
            assert seconds_to_frames(seconds, frontend) == WindowSpec.from_seconds(seconds, HOP_S, frontend).frames
    assert seconds_to_frames(WINDOW_S, FrontendConfig()) == 125   # 4 s of 512-sample hops at 16 kHz


@pytest.mark.parametrize("base, knobs, name", [
    ("paper", {}, "paper"),
    ("field", {"average_last": 5, "hidden": 128, "centre_bands": True}, "field-avg5-h128l2-cb"),
    ("paper", {"frontend_kind": "pcen", "hard_negatives": 2.0}, "paper-pcen-hn2"),
    ("field", {"frontend_kind": "logmel_pcen", "average_last": 1, "hidden": 8, "layers": 1, "window_s": 0.5,
               "hop_s": 0.25, "mix_other_recorders": True}, "field-logmel_pcen-avg1-h8l1-w0.5-xrec"),
    ("field", {"hop_s": 1.0}, "field-w4"),
    ("field", {"frontend_kind": "pcen", "f_max": 4000.0, "average_last": 5}, "field-pcen-fmax4000-avg5"),
])
def test_recipe_names_say_what_differs_from_the_papers_recipe(base, knobs, name):
    assert recipe_name(base, **knobs) == name


def test_cv_recipes_name_their_options_and_refuse_an_unknown_one():
    recipes = cv_recipes(["baseline", "paper", "field"], FrontendConfig(kind="pcen"), epochs=3, seed=1,
                         average_last=2, hard_negatives=0.5, mix_other_recorders=True)
    assert [r.name for r in recipes] == ["baseline", "paper-pcen-avg2-hn0.5", "field-pcen-avg2-hn0.5-xrec"]
    assert recipes[0].model is None and recipes[2].augment.mix_other_recorders
    assert not recipes[1].augment.mix_other_recorders   # only the field recipe mixes in background
    with pytest.raises(ValueError, match=r"unknown recipe\(s\) \['cqt'\]"):
        cv_recipes(["paper", "cqt"], FrontendConfig(), epochs=3, seed=0)


def test_cv_cli_refuses_an_unknown_recipe_as_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from training.cli import app

    result = CliRunner().invoke(app, ["cv", "--recipe", "paper", "--recipe", "cqt", "--out", str(tmp_path / "cv")])
    assert result.exit_code == 2, result.output
    assert "unknown recipe(s) ['cqt']: choose from ['baseline', 'paper', 'field']" in result.output
    assert not (tmp_path / "cv").exists()
