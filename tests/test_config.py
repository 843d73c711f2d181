"""Settings: a TOML file, overridden by EDGEMON_* environment variables, overridden by options;
`edgemon config` says where each value came from; mistakes are errors, never silent defaults."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import tomllib
import typing
import wave
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from edgemon.cli import app
from edgemon.config import BY_NAME, SETTINGS, ConfigError, OptionError, ServiceConfig, load_settings, parse_options
from edgemon.files.watcher import WatchConfig
from edgemon.health import HealthConfig
from edgemon.live.clips import ClipConfig
from edgemon.live.worker import ListenConfig
from edgemon.storage.disk_budget import DiskBudget

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

    service = s.service
    assert (service.db, s.sources["db"]) == (Path("/data/file.db"), str(config))
    assert (service.device_id, s.sources["device_id"]) == ("from-env", "env EDGEMON_DEVICE_ID")
    assert (service.settle_s, s.sources["settle_s"]) == (3.0, "command line")
    assert (service.retry_s, s.sources["retry_s"]) == (9.5, str(config))
    assert (service.threads, service.rescan_s, s.sources["rescan_s"]) == (2, 30.0, "default")
    assert isinstance(service.settle_s, float)   # TOML's integer 7 became the setting's float


def test_config_file_found_by_env_variable_or_default_path(tmp_path):
    config = write(tmp_path / "x.toml", 'device_id = "x"\n')
    assert load_settings(env={"EDGEMON_CONFIG": str(config)}, default_path=None).service.device_id == "x"
    assert load_settings(env={}, default_path=config).file == config
    assert load_settings(env={}, default_path=tmp_path / "absent.toml").file is None
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="is a directory: give the TOML file in it"):   # said "not found"
        load_settings(tmp_path, env={})


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
    ('latitude = 200.0\n', "latitude: must be at most 90"),        # accepted until the fleet refused it
    ('longitude = 999.0\n', "longitude: must be at most 180"),
    ('[listen]\nclip_pre_s = 1e7\n', "clip_pre_s: must be at most 60"),   # a 298 GiB ring, a traceback
    ('timezone = "Mars/Olympus"\n', "unknown IANA time zone 'Mars/Olympus'"),   # the first export failed on it
    ('timezone = "asia/kuching"\n', "did you mean 'Asia/Kuching'"),
])
def test_mistakes_in_the_file_are_errors_naming_file_and_key(tmp_path, text, message):
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(config, env={}, default_path=None)
    assert str(config) in str(info.value)


def test_a_bad_sync_url_is_named_by_its_source_where_sync_starts_and_by_config(tmp_path):
    """A newcomer trial: the service refused such a URL naming neither file nor key, and `config`
    showed it. Loading the settings does not refuse it: a broken sync setting must not stop a
    unit recording or exporting (a review)."""
    from edgemon.sync.service import check_sync_url

    url = "postgresql://recorder:s3cret@10.0.0.5/fleet"
    from_env = load_settings(env={"EDGEMON_SYNC_URL": url}, default_path=None)   # loads: watch runs on
    with pytest.raises(ConfigError, match="environment variable EDGEMON_SYNC_URL: the fleet database URL holds a password") as info:
        check_sync_url(from_env)
    assert "s3cret" not in str(info.value)
    config = write(tmp_path / "svc.toml", '[sync]\nsync_url = "garbage"\n')
    with pytest.raises(ConfigError, match=r"svc.toml: \[sync\] sync_url: a fleet database is given as a postgresql"):
        check_sync_url(load_settings(config, env={}, default_path=None))
    shown = CliRunner().invoke(app, ["config", "--config", str(config)])
    assert shown.exit_code == 1 and "[sync] sync_url: a fleet database is given as a postgresql:// URL" in shown.output
    with pytest.raises(ConfigError, match="option --to: the fleet database URL holds a password"):
        check_sync_url(load_settings(config, env={}, default_path=None), url)
    # A port libpq cannot take was shown by config and called "unreachable" by sync (a review).
    config = write(tmp_path / "port.toml", '[sync]\nsync_url = "postgresql://recorder@10.0.0.5:55432x/fleet"\n')
    shown = CliRunner().invoke(app, ["config", "--config", str(config)])
    assert shown.exit_code == 1 and "port.toml: [sync] sync_url: sync URL: port '55432x' is not a port number" \
        in shown.output, shown.output


@pytest.mark.parametrize("url", ["postgresql://u:pw@h/db", "postgres://u@h/db?password=pw&sslmode=require"])
def test_a_password_in_the_sync_url_is_named_without_the_driver(url, monkeypatch):
    """A newcomer trial: on the recorder-only install (no psycopg) `edgemon config` said nothing
    of a password in the URL, and the service only logged that the driver was missing."""
    from edgemon.sync import fleet_connect
    from edgemon.sync.service import check_sync_url

    monkeypatch.setattr(fleet_connect, "psycopg", None)
    settings = load_settings(env={"EDGEMON_SYNC_URL": url}, default_path=None)
    with pytest.raises(ConfigError, match="EDGEMON_SYNC_URL: the fleet database URL holds a password") as info:
        check_sync_url(settings)
    assert "pw" not in str(info.value).replace("passfile", "").replace("PGPASSWORD", "")
    with pytest.raises(ConfigError, match="a fleet database is given as a postgresql:// URL"):
        check_sync_url(load_settings(env={"EDGEMON_SYNC_URL": "mysql://h/db"}, default_path=None))
    check_sync_url(load_settings(env={"EDGEMON_SYNC_URL": "postgresql://u@h/db"}, default_path=None))   # the driver's


def test_config_previews_only_options_some_command_takes():
    """A newcomer trial: `config --min-free-mb 5` showed it '# command line', and every command
    then refused the option."""
    shown = CliRunner().invoke(app, ["config", "--min-free-mb", "5"])
    assert shown.exit_code == 2 and "no command takes --min-free-mb" in shown.output, shown.output
    assert "[disk] min_free_mb" in shown.output and "EDGEMON_MIN_FREE_MB" in shown.output
    shown = CliRunner().invoke(app, ["config", "--settle-s", "3"])
    assert shown.exit_code == 0 and "settle_s = 3.0" in shown.output and "command line" in shown.output


def test_environment_values_are_parsed_and_checked(tmp_path):
    assert load_settings(env={"EDGEMON_TIMEZONE": "Asia/Kuching"}, default_path=None).service.timezone == "Asia/Kuching"
    with pytest.raises(ConfigError, match="EDGEMON_TIMEZONE: unknown IANA time zone 'Mars/Olympus'"):
        load_settings(env={"EDGEMON_TIMEZONE": "Mars/Olympus"}, default_path=None)
    s = load_settings(env={"EDGEMON_THREADS": "3", "EDGEMON_DEVICE": "2", "EDGEMON_MODELS": ""}, default_path=None).service
    assert (s.threads, s.device, s.models) == (3, "2", None)
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
            assert settings.values[s.name] == s.default, s.name
    assert settings.service.db == Path("/var/lib/edgemon/edgemon.db")


def test_defaults_agree_with_the_components(tmp_path):
    """One default per setting: the service config built from the registry's defaults equals each
    component's own defaults (watch, capture, clips, listen, health, disk)."""
    defaults = load_settings(env={}, default_path=None).service
    assert dataclasses.replace(defaults, directory=tmp_path).watch_config() == WatchConfig(root=tmp_path)
    assert defaults.listen_config() == ListenConfig()
    assert dataclasses.replace(defaults, clips=tmp_path).listen_config().clips == ClipConfig(tmp_path)
    assert defaults.health_config() == HealthConfig()
    assert defaults.disk_budget() == DiskBudget()


# Options that share a setting's name but are not that setting: `fleet status` runs on a
# workstation against the fleet's PostgreSQL database, not on a recorder.
NOT_SETTINGS = {
    ("fleet", "status", "db"): "the fleet database's postgresql:// URL, not the recorder's SQLite file",
    ("fleet", "migrate", "db"): "the fleet database's postgresql:// URL, not the recorder's SQLite file",
    ("fleet", "status", "min_free_mb"): "the visit rule for recorders' disks (500 MB), not this unit's watermark",
    # DIRECTORY (positional) is the setting; the hidden --directory stays for existing scripts
    ("watch", "directory_alias"): "hidden alias of DIRECTORY",
    ("status", "directory_alias"): "hidden alias of DIRECTORY",
}


def setting_options(group, prefix: tuple[str, ...] = ()):
    """``(command path, click option, Setting)`` for every option of every command and subcommand
    under ``group`` that is a setting by parameter name or by flag, bar ``NOT_SETTINGS``."""
    by_option = {s.option: s for s in SETTINGS}
    for name, command in group.commands.items():
        path = (*prefix, name)
        if hasattr(command, "commands"):
            yield from setting_options(command, path)
            continue
        for param in command.params:
            if param.param_type_name != "option" or (*path, param.name) in NOT_SETTINGS:
                continue
            s = BY_NAME.get(param.name) or next((by_option[o] for o in param.opts if o in by_option), None)
            if s is not None:
                yield path, param, s


def option_drift(group) -> list[str]:
    """One line per option of a setting whose flag, type, help or default differs from the
    registry. An option's own default must be None ("not given", so the settings file and the
    environment decide) with the registry's default in its help, or equal the registry's."""
    problems = []
    for path, param, s in setting_options(group):
        where = f"edgemon {' '.join(path)} {'/'.join(param.opts)}"
        shown = "" if s.default is None else f"  [default: {s.default}]"
        if param.opts != [s.option] or param.name != s.name:
            problems.append(f"{where}: flag {param.opts} / name {param.name}, registry {s.option} / {s.name}")
        if param.type_descriptor.annotation is not s.kind:   # typer's parsed type
            problems.append(f"{where}: type {param.type_descriptor.annotation}, registry {s.kind}")
        if param.default is None and (param.help != s.help + shown or param.show_default):
            problems.append(f"{where}: help {param.help!r}, registry {s.help + shown!r}")
        if param.default is not None and (param.default != s.default or param.help != s.help):
            problems.append(f"{where}: default {param.default!r} / help {param.help!r}, "
                            f"registry {s.default!r} / {s.help!r}")
    return problems


def edgemon_commands():
    """A fresh click tree of ``edgemon`` (typer builds new objects on each call: safe to alter)."""
    return typer.main.get_command(app)


def test_every_option_that_is_a_setting_shows_the_registry_help_and_default():
    """Options cannot drift from the registry (``--retry-s`` once did), in commands and subcommands."""
    root = edgemon_commands()
    assert option_drift(root) == []
    checked = {(" ".join(path), s.name) for path, _, s in setting_options(root)}
    # the commands that run with settings really expose them (the test cannot pass empty)
    assert {("watch", "retry_s"), ("watch", "db"), ("listen", "queue_s"), ("listen", "threads"),
            ("status", "db"), ("classify", "models"), ("review", "clips"), ("sync", "db")} <= checked
    # each exception still names an option that exists (a stale entry would hide a future one)
    for *path, name in NOT_SETTINGS:
        command = root
        for part in path:
            command = command.commands[part]
        assert name in {p.name for p in command.params}, (path, name)


def test_a_planted_drift_is_caught():
    """The check fails on each way an option can drift: help copied by hand and then left behind
    (the old ``--retry-s``), a default of its own, another flag, another type; also in a subcommand."""
    root = edgemon_commands()
    params = {(name, p.name): p for name, c in root.commands.items() if hasattr(c, "params") for p in c.params}
    retry, queue, threads = params["watch", "retry_s"], params["listen", "queue_s"], params["classify", "threads"]
    retry.help = "Seconds before a file that failed is tried again."
    retry.show_default = True
    queue.default = 20.0
    threads.opts = ["--thread"]
    params["status", "db"].type_descriptor = dataclasses.replace(params["status", "db"].type_descriptor,
                                                                  annotation=str)
    drift = option_drift(root)
    assert len(drift) == 4, drift
    assert [line.split(":")[0] for line in drift] == [
        "edgemon watch --retry-s", "edgemon status --db", "edgemon classify --thread", "edgemon listen --queue-s"]
    # options written by hand, as `watch --retry-s` was before the registry made them, in a
    # subcommand group: the help copied and then left behind is caught; a copy that still agrees
    # (default equal to the registry's, help identical) passes
    legacy = typer.Typer()

    @legacy.callback()
    def _group():
        """A group, so that its commands are subcommands."""

    @legacy.command()
    def watch(retry_s: Annotated[float, typer.Option(help="Seconds before a file that failed is tried again.")] = 60.0,
              settle_s: Annotated[float, typer.Option(help=BY_NAME["settle_s"].help)] = 5.0):
        """The old way."""

    root.add_command(typer.main.get_command(legacy), "legacy")
    assert option_drift(root)[4:] == [
        "edgemon legacy watch --retry-s: default 60.0 / help 'Seconds before a file that failed is tried again.', "
        f"registry 60.0 / {BY_NAME['retry_s'].help!r}"]


def test_the_service_config_has_one_typed_attribute_per_setting():
    """``ServiceConfig`` mirrors the registry (name, order, type; Optional exactly when unset by
    default), so ``service.retry_s`` is the setting ``retry_s``; ``config_file`` is its one extra."""
    hints = typing.get_type_hints(ServiceConfig)
    fields = [f.name for f in dataclasses.fields(ServiceConfig)]
    assert fields == [s.name for s in SETTINGS] + ["config_file"]
    for s in SETTINGS:
        assert hints[s.name] == (s.kind | None if s.default is None else s.kind), s.name
    service = load_settings(cli={"retry_s": 7.0}, env={"EDGEMON_DB": "/x/y.db"}, default_path=None).service
    assert (service.retry_s, service.db, service.rescan_s, service.models) == (7.0, Path("/x/y.db"), 30.0, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        service.db = Path("other.db")


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


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run a command as another user")
def test_a_database_in_a_directory_the_user_may_not_search_is_one_line(tmp_path):
    """An admin running `edgemon status` on the service's database (its directory is 0750 edgemon)
    got a 54-line PermissionError traceback."""
    closed = tmp_path / "state"
    closed.mkdir(mode=0o700)
    tmp_path.chmod(0o755)
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    repo = Path(__file__).resolve().parents[1]
    if subprocess.run([*as_nobody, sys.executable, "-c", "import edgemon"], cwd=repo, capture_output=True).returncode:
        pytest.skip("this checkout or its Python cannot be read by the user nobody")
    result = subprocess.run([*as_nobody, sys.executable, "-m", "edgemon", "status", "--db", str(closed / "edgemon.db")],
                            capture_output=True, text=True, timeout=60, cwd=repo)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0] == f"error: option --db: {closed / 'edgemon.db'}: cannot be reached (Permission denied); " \
                       "run as a user who may read it"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run a command as another user")
def test_another_users_database_in_a_directory_this_user_may_not_write_says_how_to_read_it(request):
    """Found by a hostile-input trial: status and export said 'attempt to write a readonly
    database' for a database whose directory the reader may not write. A review then showed that
    reading it immutable gives stale and torn reads while its owner writes: it is refused in one
    line that says how to read it."""
    import tempfile
    from devtools.recorder_db import make_recorder
    shared = Path(tempfile.mkdtemp(prefix="edgemon-shared-"))   # pytest's own tmp is root's alone
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    shared.chmod(0o755)
    db = make_recorder(shared / "det.db", "rec-a", files=3, per_file=2, heartbeats=1)
    db.chmod(0o644)
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    repo = Path(__file__).resolve().parents[1]
    if subprocess.run([*as_nobody, sys.executable, "-c", "import edgemon"], cwd=repo, capture_output=True).returncode:
        pytest.skip("this checkout or its Python cannot be read by the user nobody")
    for command in (["export-detections"], ["status"]):
        done = subprocess.run([*as_nobody, sys.executable, "-m", "edgemon", *command, "--db", str(db)],
                              capture_output=True, text=True, timeout=60, cwd=repo)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert str(db) in lines[0] and f"may not write {shared}" in lines[0] and "sudo -u root" in lines[0]
    assert sorted(p.name for p in shared.iterdir()) == ["det.db"]     # nothing made beside it
    # Its own database in a directory it may not write is still read (a review found it refused).
    os.chown(db, 65534, 65534)
    os.chown(shared, 65534, 65534)
    shared.chmod(0o555)
    request.addfinalizer(lambda: shared.chmod(0o755))
    exported = subprocess.run([*as_nobody, sys.executable, "-m", "edgemon", "export-detections", "--db", str(db)],
                              capture_output=True, text=True, timeout=60, cwd=repo)
    assert exported.returncode == 0 and len(exported.stdout.strip().splitlines()) == 1 + 6, exported.stderr


def test_typed_configs_come_from_settings(tmp_path):
    s = load_settings(cli={"directory": tmp_path, "settle_s": 1.5, "min_free_mb": 50.0, "heartbeat_s": 60.0},
                      env={}, default_path=None).service
    watch = s.watch_config(until_idle=True)
    assert (watch.root, watch.settle_s, watch.until_idle) == (tmp_path, 1.5, True)
    assert s.disk_budget().min_free_mb == 50.0 and s.health_config().heartbeat_s == 60.0
    listen = load_settings(cli={"clips": tmp_path / "clips", "device": "USB", "clip_pre_s": 1.0}, env={},
                           default_path=None).service.listen_config(duration_s=5.0)
    assert (listen.capture.device, listen.clips.directory, listen.clips.pre_s, listen.duration_s) == (
        "USB", tmp_path / "clips", 1.0, 5.0)
    # `run` has no DIRECTORY and no --directory: the message named both (a newcomer trial)
    with pytest.raises(ConfigError, match=r"no directory to watch: `edgemon watch DIRECTORY`, or for either "
                                          r"command EDGEMON_DIRECTORY or `directory` in \[watch\]") as refused:
        load_settings(env={}, default_path=None).service.watch_config()
    assert "--directory" not in str(refused.value)


def test_a_misspelt_environment_variable_is_warned_of_not_silently_ignored(tmp_path, caplog):
    env = {"EDGEMON_SETLE_S": "3", "EDGEMON_REVIEW_TOKEN": "t", "EDGEMON_RETRY_S": "7"}
    with caplog.at_level("WARNING", logger="edgemon.config"):
        settings = load_settings(env=env, default_path=None)
    assert settings.values["retry_s"] == 7.0 and settings.values["settle_s"] == 5.0
    warned = [r.getMessage() for r in caplog.records]
    assert warned == ["environment variable EDGEMON_SETLE_S is not an edgemon setting; ignored "
                      "(did you mean 'EDGEMON_SETTLE_S'?)"]


def test_a_password_in_the_sync_url_is_never_shown(tmp_path, caplog):
    """Found by a second newcomer trial: `edgemon config` printed it (sync refuses such a URL)."""
    path = tmp_path / "pw.toml"
    path.write_text('[sync]\nsync_url = "postgresql://u:secret@h/db?password=other&sslmode=require"\n')
    settings = load_settings(path, env={}, default_path=None)
    with caplog.at_level("INFO"):
        settings.log(logging.getLogger("test"))
    shown = settings.describe() + json.dumps(settings.as_json()) + caplog.text
    assert "secret" not in shown and "other" not in shown
    assert "postgresql://u:***@h/db?password=***&sslmode=require" in settings.describe()
    assert settings.values["sync_url"].startswith("postgresql://u:secret@")   # the value itself is kept


def test_a_tilde_in_the_settings_file_is_the_home_directory(tmp_path, monkeypatch):
    """A newcomer trial: `db = "~/tilde.db"` and `directory = "~/card"` were taken literally (no
    shell expands them in a file): "~/card: no such directory" of a directory that exists."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = write(tmp_path / "e.toml", 'db = "~/tilde.db"\n[watch]\ndirectory = "~/card"\n')
    s = load_settings(config, env={}, default_path=None)
    assert s.service.db == tmp_path / "tilde.db"
    assert s.values["directory"] == tmp_path / "card"
    (tmp_path / "conf").mkdir()
    moved = shutil.copy(config, tmp_path / "conf" / "e.toml")
    assert load_settings(env={"EDGEMON_CONFIG": "~/conf/e.toml"}, default_path=None).file == Path(moved)
    # ~user with no such user: one line naming where (a review: a traceback)
    nobody = write(tmp_path / "n.toml", 'db = "~nosuchuser-edgemon/x.db"\n')
    with pytest.raises(ConfigError,
                       match=r"db.*'~nosuchuser-edgemon/x.db': no home directory for '~nosuchuser-edgemon'"):
        load_settings(nobody, env={}, default_path=None)
    with pytest.raises(ConfigError, match="env EDGEMON_CONFIG.*no home directory"):
        load_settings(env={"EDGEMON_CONFIG": "~nosuchuser-edgemon/e.toml"}, default_path=None)


def test_a_song_meters_fixed_utc_offset_is_a_clock_timezone(tmp_path):
    """A review: a Song Meter keeps the one UTC offset it was set to for a whole deployment (it
    makes no summer-time change), yet `clock_timezone` took only IANA names, each with its summer
    time: "Europe/Berlin" put every summer recording of a recorder set to UTC+1 an hour early, and
    "UTC+1", the Song Meter's own way of saying it, was refused."""
    from edgemon.files.recordings import recording_time

    config = write(tmp_path / "e.toml", 'clock_timezone = "UTC+1"\n')
    clock = load_settings(config, env={}, default_path=None).service.clock_zone()
    assert clock == dt.timezone(dt.timedelta(hours=1))
    for text, hours in (("UTC-05:00", -5), ("UTC+5:30", 5.5), ("UTC+8", 8)):
        zone = load_settings(env={"EDGEMON_CLOCK_TIMEZONE": text}, default_path=None).service.clock_zone()
        assert zone.utcoffset(None) == dt.timedelta(hours=hours), text
    recording = tmp_path / "SMM07257_20240701_060000.wav"
    with wave.open(str(recording), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 800)
    now = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    assert recording_time(recording, now=now, clock=clock).start_utc == dt.datetime(2024, 7, 1, 5, tzinfo=dt.timezone.utc)
    for bad in ("UTC+25", "UTC+8:75", "GMT+8"):
        with pytest.raises(ConfigError, match="(?i)clock_timezone.*nor a fixed offset such as .UTC\\+8"):
            load_settings(env={"EDGEMON_CLOCK_TIMEZONE": bad}, default_path=None)
    with pytest.raises(ConfigError, match="unknown IANA time zone 'UTC\\+8'"):   # `timezone` stays a zone name
        load_settings(env={"EDGEMON_TIMEZONE": "UTC+8"}, default_path=None)


def test_a_posix_etc_gmt_zone_is_refused_as_a_clock_zone(tmp_path):
    """A Borneo trial: 'Etc/GMT+8', a Song Meter's "UTC+8" as the zone database spells a fixed
    offset, is UTC-8 (POSIX's sign), and put every recording 16 h off without a word."""
    for name, said in (("Etc/GMT+8", "'Etc/GMT\\+8' is UTC-8.*write 'UTC-8', or 'UTC\\+8'"),
                       ("Etc/GMT-8", "'Etc/GMT-8' is UTC\\+8.*write 'UTC\\+8', or 'UTC-8'")):
        with pytest.raises(ConfigError, match=f"EDGEMON_CLOCK_TIMEZONE: {said}"):
            load_settings(env={"EDGEMON_CLOCK_TIMEZONE": name}, default_path=None)
    for fine in ("Etc/GMT", "Etc/GMT+0", "UTC+8", "Asia/Kuching"):
        assert load_settings(env={"EDGEMON_CLOCK_TIMEZONE": fine}, default_path=None).service.clock_zone() is not None
    # the display zone takes zone names only, and Etc/GMT-8 is a plain one there
    assert load_settings(env={"EDGEMON_TIMEZONE": "Etc/GMT-8"}, default_path=None).service.timezone == "Etc/GMT-8"


def test_a_device_id_with_a_control_character_is_refused_naming_where_it_came_from(tmp_path):
    """A device id travels with every row to the fleet database: one holding a NUL recorded a
    season and then never synced ("PostgreSQL text fields cannot contain NUL (0x00) bytes", naming
    no setting), and one holding a newline forged lines of `fleet status` (a review). Refused as
    the settings are read, in one line naming where it came from."""
    config = write(tmp_path / "e.toml", 'device_id = "site\\u0000F"\n')
    with pytest.raises(ConfigError, match=rf"{config}: device_id: 'site\\x00F' holds a control or invisible character"):
        load_settings(config, env={}, default_path=None)
    with pytest.raises(ConfigError, match=r"environment variable EDGEMON_DEVICE_ID: 'site\\nNEEDS A VISIT' holds"):
        load_settings(env={"EDGEMON_DEVICE_ID": "site\nNEEDS A VISIT"}, default_path=None)
    result = CliRunner().invoke(app, ["watch", str(tmp_path), "--db", str(tmp_path / "d.db"), "--until-idle",
                                      "--device-id", "site\x1b[31m"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines() == [
        "error: option --device-id: 'site\\x1b[31m' holds a control or invisible character; "
        "give plain text (it names the recorder in the fleet database and its reports)"]
    assert not (tmp_path / "d.db").exists()
    # Any printable text stays an id, as before.
    for ok in ("site-07", "Sabah ridge #3", "café/ü"):
        assert load_settings(cli={"device_id": ok}, env={}, default_path=None).service.device_id == ok


def test_a_settings_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Windows editors (Notepad before 2019, many others) save UTF-8 with a byte-order mark: the
    unit refused such a file with "not valid TOML: Invalid statement (at line 1, column 1)", a
    line that says nothing of what was wrong with a file that looks right in every editor."""
    config = tmp_path / "edgemon.toml"
    config.write_bytes(b"\xef\xbb\xbf" + '[watch]\r\nsettle_s = 3\r\n'.encode())
    settings = load_settings(config, env={}, default_path=None)
    assert settings.service.settle_s == 3.0
