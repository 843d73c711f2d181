"""Settings: a TOML file, overridden by EDGEMON_* environment variables, overridden by options;
`edgemon config` says where each value came from; mistakes are errors, never silent defaults."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.config import BY_NAME, SETTINGS, ConfigError, OptionError, load_settings, parse_options

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


def test_defaults_agree_with_the_components():
    """One default per setting: the registry and the component dataclasses agree."""
    from edgemon.files.watcher import WatchConfig

    watch_defaults = {f.name: f.default for f in dataclasses.fields(WatchConfig)}
    for name in ("settle_s", "rescan_s", "incomplete_grace_s", "retry_s", "device_id"):
        assert BY_NAME[name].default == watch_defaults[name], name


def test_every_option_that_is_a_setting_shows_the_registry_help_and_default():
    """Options cannot drift from the registry (``--retry-s`` once did): same flag, type, help and
    shown default; the option's own default is None ("not given"), so the settings file and the
    environment are not overridden by an option nobody gave (or it equals the registry's)."""
    import typer

    from edgemon.cli import app

    checked = set()
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            s = BY_NAME.get(param.name)
            if s is None or param.param_type_name != "option":
                continue
            where = f"edgemon {name} {s.option}"
            assert param.opts == [s.option], where
            assert param.help.startswith(s.help), (where, param.help, s.help)
            assert param.type_descriptor.annotation is s.kind, where   # typer's parsed type
            if param.default is None:
                shown = "" if s.default is None else f"  [default: {s.default}]"
                assert param.help == s.help + shown and not param.show_default, where
            else:
                assert param.default == s.default and param.help == s.help, where
            checked.add((name, s.name))
    # the commands that run with settings really expose them (the test cannot pass empty)
    assert {("watch", "retry_s"), ("watch", "db"), ("listen", "queue_s"), ("listen", "threads"),
            ("status", "db"), ("classify", "models")} <= checked


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_numbers_that_are_not_finite_are_refused_wherever_they_come_from(tmp_path, text):
    """``--settle-s nan`` once spun a core on queue.get(timeout=nan) and ignored SIGTERM; ``inf``
    silently processed nothing. Each source is named in the one-line error."""
    config = write(tmp_path / "e.toml", f"[watch]\nsettle_s = {text}\n")   # TOML's own nan/inf
    with pytest.raises(ConfigError, match=rf"{config}: \[watch\] settle_s: must be a finite number"):
        load_settings(config, env={}, default_path=None)
    with pytest.raises(ConfigError, match="environment variable EDGEMON_QUEUE_S: must be a finite number"):
        load_settings(env={"EDGEMON_QUEUE_S": text}, default_path=None)
    with pytest.raises(OptionError, match="option --heartbeat-s: must be a finite number"):
        load_settings(cli={"heartbeat_s": float(text)}, env={}, default_path=None)
    shown = CliRunner().invoke(app, ["config", "--rescan-s", text])
    assert shown.exit_code == 2 and "option --rescan-s: must be a finite number" in shown.output
    # through a command's own typer option, before anything is opened or created
    result = CliRunner().invoke(app, ["watch", str(tmp_path), "--db", str(tmp_path / "d.db"), "--until-idle",
                                      "--settle-s", text])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: option --settle-s: must be a finite number, got {float(text)!r}"
    assert not (tmp_path / "d.db").exists()


def test_a_settings_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    config = tmp_path / "latin1.toml"
    config.write_bytes('device_id = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{config}: not UTF-8 text \(byte 16\)"):
        load_settings(config, env={}, default_path=None)
    result = CliRunner().invoke(app, ["config", "--config", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [f"error: {config}: not UTF-8 text (byte 16); TOML files are UTF-8"]


def test_a_database_path_that_is_a_directory_is_one_line_naming_it(tmp_path):
    """SQLite said only "disk I/O error", after the model had loaded."""
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(OptionError, match=rf"option --db: {folder} is a directory, not a file"):
        load_settings(cli={"db": folder}, env={}, default_path=None)
    config = write(tmp_path / "e.toml", f'db = "{folder}"\n')
    with pytest.raises(ConfigError, match=rf"{config}: db: {folder} is a directory"):
        load_settings(config, env={}, default_path=None)
    result = CliRunner().invoke(app, ["watch", str(tmp_path), "--db", str(folder), "--until-idle"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: option --db: {folder} is a directory, not a file"
    result = CliRunner().invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 1 and result.output.strip() == f"error: {config}: db: {folder} is a directory, not a file"


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
