"""Settings: a TOML file, overridden by EDGEMON_* environment variables, overridden by options;
`edgemon config` says where each value came from; mistakes are errors, never silent defaults."""

from __future__ import annotations

import dataclasses
import inspect
import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.config import BY_NAME, SETTINGS, ConfigError, load_settings, parse_options

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "edgemon.toml"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_file_then_environment_then_command_line(tmp_path):
    config = write(tmp_path / "e.toml", 'db = "/data/file.db"\ndevice_id = "from-file"\nthreads = 2\n'
                                        '[watch]\nsettle_s = 7\nretry_s = 9.5\n')
    env = {"EDGEMON_DEVICE_ID": "from-env", "EDGEMON_SETTLE_S": "8", "EDGEMON_TORCH": "not a setting"}
    s = load_settings(config, cli={"settle_s": 3.0}, env=env, default_path=None)

    assert (s["db"], s.sources["db"]) == (Path("/data/file.db"), str(config))
    assert (s["device_id"], s.sources["device_id"]) == ("from-env", "env EDGEMON_DEVICE_ID")
    assert (s["settle_s"], s.sources["settle_s"]) == (3.0, "command line")
    assert (s["retry_s"], s.sources["retry_s"]) == (9.5, str(config))
    assert (s["threads"], s["rescan_s"], s.sources["rescan_s"]) == (2, 30.0, "default")
    assert isinstance(s["settle_s"], float)   # TOML's integer 7 became the setting's float


def test_config_file_found_by_env_variable_or_default_path(tmp_path):
    config = write(tmp_path / "x.toml", 'device_id = "x"\n')
    assert load_settings(env={"EDGEMON_CONFIG": str(config)}, default_path=None)["device_id"] == "x"
    assert load_settings(env={}, default_path=config).file == config
    assert load_settings(env={}, default_path=tmp_path / "absent.toml").file is None
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml", env={})


@pytest.mark.parametrize("text, message", [
    ('setle_s = 3\n', "unknown setting setle_s"),                 # a typo, at the top level
    ('[watch]\nsetle_s = 3\n', r"did you mean 'settle_s'"),
    ('settle_s = 3\n', r"belongs in table \[watch\]"),
    ('[wacth]\nsettle_s = 3\n', r"unknown table \[wacth\]"),
    ('[watch]\nsettle_s = "3"\n', "expected a number"),
    ('[watch]\nsettle_s = true\n', "expected a number"),
    ('threads = 1.5\n', "expected a whole number"),
    ('threads = 0\n', "at least 1"),
    ('mode = "record"\n', "must be one of watch, listen"),
    ('db = \n', "not valid TOML"),
])
def test_mistakes_in_the_file_are_errors_naming_file_and_key(tmp_path, text, message):
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(config, env={}, default_path=None)
    assert str(config) in str(info.value)


def test_environment_values_are_parsed_and_checked(tmp_path):
    s = load_settings(env={"EDGEMON_THREADS": "3", "EDGEMON_DEVICE": "2", "EDGEMON_MODELS": ""}, default_path=None)
    assert (s["threads"], s["device"], s["models"]) == (3, "2", None)
    with pytest.raises(ConfigError, match="EDGEMON_SETTLE_S: expected a number"):
        load_settings(env={"EDGEMON_SETTLE_S": "soon"}, default_path=None)


def test_only_options_really_given_override(tmp_path):
    """Through the real CLI: an option left at its default must not hide the file's value."""
    config = write(tmp_path / "e.toml", '[watch]\nsettle_s = 7.0\nrescan_s = 11.0\n')
    result = CliRunner().invoke(app, ["config", "--config", str(config), "--json", "--rescan-s", "2"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["settle_s"] == {"value": 7.0, "source": str(config), "table": "watch"}
    assert shown["rescan_s"] == {"value": 2.0, "source": "command line", "table": "watch"}
    assert shown["db"]["source"] == "default"


def test_config_command_prints_toml_with_sources(tmp_path, monkeypatch):
    config = write(tmp_path / "e.toml", 'device_id = "site-07"\n[watch]\ndirectory = "/media/moth"\n')
    monkeypatch.setenv("EDGEMON_RETRY_S", "12")
    result = CliRunner().invoke(app, ["config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert 'device_id = "site-07"' in text and f"# {config}" in text
    assert "retry_s = 12.0" in text and "# env EDGEMON_RETRY_S" in text
    assert "# models = (unset)" in text
    body = "\n".join(line.split("  #")[0] for line in text.splitlines() if not line.startswith("#"))
    assert tomllib.loads(body)["watch"]["directory"] == "/media/moth"   # the output is TOML again
    bad = CliRunner().invoke(app, ["config", "--config", str(config), "--setle-s", "1"])
    assert bad.exit_code == 2 and "unknown option --setle-s" in bad.output


def test_parse_options():
    assert parse_options(["--db=x.db", "--settle-s", "3"]) == {"db": Path("x.db"), "settle_s": 3.0}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_options(["--db"])


def test_example_config_names_every_setting_with_its_default():
    """deploy/edgemon.toml documents every setting (commented out when unset), at its default
    except the deployment paths, and loads cleanly."""
    text = EXAMPLE.read_text()
    for s in SETTINGS:
        assert f"{s.name} = " in text or f"# {s.name} = " in text, f"{s.name} missing from {EXAMPLE}"
    settings = load_settings(EXAMPLE, env={}, default_path=None)
    deployment = {"db", "directory"}
    for s in SETTINGS:
        if s.name not in deployment:
            assert settings[s.name] == s.default, s.name
    assert settings["db"] == Path("/var/lib/edgemon/edgemon.db")


def test_defaults_agree_with_the_components_and_the_cli():
    """One default per setting: the registry, the component dataclasses and the CLI options agree."""
    from edgemon import cli
    from edgemon.watch import WatchConfig

    watch_defaults = {f.name: f.default for f in dataclasses.fields(WatchConfig)}
    for name in ("settle_s", "rescan_s", "incomplete_grace_s", "retry_s", "device_id"):
        assert BY_NAME[name].default == watch_defaults[name], name
    for command in (cli.watch, cli.listen):
        for name, param in inspect.signature(command).parameters.items():
            if name in BY_NAME and name != "directory":
                assert param.default == BY_NAME[name].default, f"{command.__name__} --{name}"


def test_typed_configs_come_from_settings(tmp_path):
    s = load_settings(cli={"directory": tmp_path, "settle_s": 1.5, "min_free_mb": 50.0, "heartbeat_s": 60.0},
                      env={}, default_path=None)
    watch = s.watch_config(until_idle=True)
    assert (watch.root, watch.settle_s, watch.until_idle) == (tmp_path, 1.5, True)
    assert s.disk_budget().min_free_mb == 50.0 and s.health_config().heartbeat_s == 60.0
    listen = load_settings(cli={"clips": tmp_path / "clips", "device": "USB", "clip_pre_s": 1.0}, env={},
                           default_path=None).listen_config(duration_s=5.0)
    assert (listen.capture.device, listen.clips.directory, listen.clips.pre_s, listen.duration_s) == (
        "USB", tmp_path / "clips", 1.0, 5.0)
    with pytest.raises(ConfigError, match="no directory to watch"):
        load_settings(env={}, default_path=None).watch_config()
