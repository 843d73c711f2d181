"""Both command lines driven through their test runner: classify, export-detections, info; one
settings path for every command; --version, -h and completion; exit statuses; journal lines."""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import inspect
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import typer
from typer.testing import CliRunner

from edgemon import console
from edgemon.analysis.bundle import MANIFEST, default_bundle_path
from edgemon.cli import app
from edgemon.storage.store import Store
from edgemon.sync.fleet_status import VisitRules, collect_fleet
from edgemon.sync.sender import SyncConfig
from tests.conftest import write_manifest
from tests.watch_helpers import watch_until_idle, write_wav

runner = CliRunner()


@pytest.fixture(scope="module")
def duet_recording(borneo_dir, tmp_path_factory):
    clip = sorted((borneo_dir / "audio").glob("duet_*.flac"))[1]
    x = soundfile.read(clip, dtype="float32")[0]
    return write_wav(tmp_path_factory.mktemp("rec") / "20180301_060000.WAV", x)


def test_classify_prints_detections_as_csv_with_utc_times(duet_recording):
    result = runner.invoke(app, ["classify", str(duet_recording), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and rows[0]["label"] == "gibbon_duet"
    assert rows[0]["start_utc"].startswith("2018-03-01T06:00")


def test_classify_reads_a_named_file_in_another_format_as_its_help_says(duet_recording, tmp_path):
    """The help said "Audio files (WAV or FLAC)" while classify reads any format libsndfile does when
    the file is named (the README says so; only a directory's walk keeps to WAV and FLAC)."""
    x, rate = soundfile.read(duet_recording, dtype="float32")
    ogg = tmp_path / "20180301_060000.ogg"
    soundfile.write(ogg, x, rate, format="OGG")
    result = runner.invoke(app, ["classify", str(ogg), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert list(csv.DictReader(io.StringIO(result.stdout)))[0]["label"] == "gibbon_duet"
    text = " ".join(runner.invoke(app, ["classify", "-h"]).output.split())
    assert "WAV or FLAC)" not in text and "Ogg" in text and "when named" in text


def test_classify_says_when_it_timed_a_file_by_its_modification_time(duet_recording, tmp_path):
    """A newcomer trial: a file named without a start time showed today's time in the table (which
    has no time-source column), with nothing said; watch says it."""
    renamed = tmp_path / "site A morning.wav"
    renamed.write_bytes(duet_recording.read_bytes())
    done = subprocess.run([sys.executable, "-m", "edgemon", "classify", str(renamed)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "site A morning.wav: no start time in its name or header: timed by its modification time" in done.stderr
    named = subprocess.run([sys.executable, "-m", "edgemon", "classify", str(duet_recording)], capture_output=True,
                           text=True, timeout=120)
    assert named.returncode == 0 and "modification time" not in named.stderr


def test_classify_table_and_a_bad_file_among_good_ones(duet_recording, tmp_path):
    bad = tmp_path / "broken.WAV"
    bad.write_bytes(b"RIFF....junk")
    result = runner.invoke(app, ["classify", str(duet_recording), str(bad)])
    assert result.exit_code == 1
    assert "gibbon_duet" in result.stdout and "broken.WAV" in result.output
    assert "Traceback" not in result.output
    alone = runner.invoke(app, ["classify", "--format", "csv", str(bad)])   # no table: a bare header said "no calls"
    assert alone.exit_code == 1 and alone.stdout == "" and "broken.WAV" in alone.output


def test_export_formats_and_incremental_sync(duet_recording, tmp_path):
    db = tmp_path / "d.db"
    watch_until_idle(duet_recording.parent, db)
    out = runner.invoke(app, ["export-detections", "--db", str(db), "--new"])
    assert out.exit_code == 0 and "gibbon_duet" in out.stdout
    again = runner.invoke(app, ["export-detections", "--db", str(db), "--new"])
    assert again.exit_code == 0 and "gibbon_duet" not in again.stdout   # already delivered
    jsonl = tmp_path / "d.jsonl"
    assert runner.invoke(app, ["export-detections", "--db", str(db), "--format", "jsonl",
                               "--output", str(jsonl), "--label", "gibbon_duet"]).exit_code == 0
    assert all(json.loads(line)["label"] == "gibbon_duet" for line in jsonl.read_text().splitlines())
    raven = tmp_path / "raven"
    raven.mkdir()
    assert runner.invoke(app, ["export-detections", "--db", str(db), "--format", "raven",
                               "--output", str(raven)]).exit_code == 0
    table = next(raven.glob("*.BirdNET.selection.table.txt")).read_text().splitlines()
    assert table[0].startswith("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)")
    none = runner.invoke(app, ["export-detections", "--db", str(db), "--since", "2019-01-01"])
    assert none.exit_code == 0 and len(none.stdout.splitlines()) == 1  # header only
    # since <= start < until, for bounds given finer than the millisecond times are stored to (a
    # newcomer trial: a start 0.4 ms before --since was in, one 0.1 ms before --until out).
    with sqlite3.connect(db) as conn:
        first = conn.execute("SELECT min(start_utc) FROM detections").fetchone()[0]     # '...T05:30:11.904Z'

    def rows(*bounds):
        out = runner.invoke(app, ["export-detections", "--db", str(db), "--format", "jsonl", *bounds])
        assert out.exit_code == 0, out.output
        return [json.loads(line)["start_utc"] for line in out.stdout.splitlines()]

    assert first not in rows("--since", first[:-1] + "4Z")
    assert first in rows("--since", first[:-1] + "0Z")
    assert first in rows("--since", "2000-01-01", "--until", first[:-1] + "1Z")
    assert first not in rows("--since", "2000-01-01", "--until", first)


@pytest.mark.parametrize("args, code, message", [
    (["export-detections", "--db", "/nonexistent/d.db"], 1, "d.db"),          # it ran and failed
    (["info", "--models", "/nonexistent"], 1, "/nonexistent: no such bundle directory"),
    (["status", "--db", "/nonexistent/d.db"], 1, "d.db"),
    (["export-detections", "--since", "yesterday"], 2, "--since: not an ISO 8601 time"),   # the command line is wrong
    (["export-detections", "--until", "0001-01-01T00:00:00+01:00"], 2, "--until: '0001-01-01T00:00:00+01:00' is outside"),
    (["export-detections", "--since", "9999-12-31T23:59:59-01:00"], 2, "--since: '9999-12-31T23:59:59-01:00' is outside"),
    (["export-detections", "--since", "2024-06-01", "--until", "2024-05-01"], 2, "is not before --until"),
    (["config", "--setle-s", "1"], 2, "did you mean '--settle-s'"),
    (["listen", "--duration-s", "nan"], 2, "--duration-s"),
    (["fleet", "status", "--db", "d.db"], 1, "option --db: a fleet database is given as a postgresql:// URL"),
    (["fleet", "status", "--db", "postgresql://x@h/f", "--days", "-3"], 2, "--days"),
    (["fleet", "status", "--db", "postgresql://x@h/f", "--days", "100000000"], 2, "--days 100000000: give 1 to"),
    (["fleet", "status", "--db", "postgresql://x@h/f", "--min-free-mb", "nan"], 2, "--min-free-mb nan"),
])
def test_failures_exit_1_and_refused_options_exit_2_in_one_line(args, code, message):
    result = runner.invoke(app, args)
    assert result.exit_code == code and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: ")


def test_watch_with_a_bundle_that_is_not_there_leaves_nothing_beside_the_database(tmp_path):
    """A newcomer trial: `watch --models nosuch` said so in one line and left `<db>.lock` behind
    (no database), as a missing directory does not."""
    recordings = tmp_path / "rec"
    recordings.mkdir()
    result = runner.invoke(app, ["watch", str(recordings), "--db", str(tmp_path / "d.db"), "--models",
                                 str(tmp_path / "nosuch"), "--until-idle"])
    assert result.exit_code == 1 and "nosuch: no such bundle directory" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]


@pytest.mark.parametrize("args, said", [
    # neither the validator's "Value error," nor the value named twice (a newcomer trial)
    (["classify", "x.wav", "--format", "xml"], "error: edgemon classify: Invalid value for '--format': 'xml' is "
                                               "not one of 'table', 'csv'; see `edgemon classify -h`"),
    (["watch", "--settle-s", "soon"], "(given 'soon'); see `edgemon watch -h`"),
    (["watch", "--settle-s=soon"], "(given 'soon')"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["status", "--no-such-option"], "error: edgemon status: No such option: --no-such-option")])
def test_usage_errors_found_by_the_parser_exit_2_in_one_line_naming_the_value(args, said):
    """A newcomer trial: four lines (usage, a hint, a blank, the error), and the value refused
    not named ("Input should be a valid number")."""
    installed = Path(sys.executable).with_name("edgemon")    # as a user runs it (under -m it names python)
    run = subprocess.run([str(installed), *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert said in run.stderr and "Traceback" not in run.stderr and "Usage:" not in run.stderr


@pytest.mark.parametrize("program", ["edgemon", "edgemon-train"])
def test_version_short_help_and_completion_on_both_commands(program):
    from training.cli import app as train_app

    application = app if program == "edgemon" else train_app
    shown = runner.invoke(application, ["--version"])
    assert shown.exit_code == 0 and shown.output == f"{program} {importlib.metadata.version('edgemon')}\n"
    top = runner.invoke(application, ["-h"])
    assert top.exit_code == 0 and "--version" in top.output and "--install-completion" in top.output
    assert "Exit status: 0 done; 1" in " ".join(top.output.split())
    command = "watch" if program == "edgemon" else "cv"
    assert runner.invoke(application, [command, "-h"]).output.startswith("Usage:")
    words = f"{program} {command[:2]}"
    completed = runner.invoke(application, [], prog_name=program, env={
        f"_{program.replace('-', '_').upper()}_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": "1"})
    assert completed.exit_code == 0 and command in completed.output.split()


def test_help_prints_brackets_and_flags_as_written():
    """Rich markup once swallowed "[watch]" and flags showed a "<bool>" value they do not take."""
    text = runner.invoke(app, ["watch", "-h"]).output
    assert "in [watch] of the settings file" in " ".join(text.split())
    assert "<bool>" not in text and re.search(r"--until-idle\s+Exit once", text)


def _command_paths(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_help_names_values_not_python_types():
    """Typer wrote `classify [OPTIONS] {FILES}...` and `FILES <list[Path]>`, `bundle {runs}...`,
    `cv --recipe <list[str]>`, and `<str>` over a closed set of choices (a docs review)."""
    from training.cli import app as train_app

    for application in (app, train_app):
        for path in _command_paths(typer.main.get_command(application)):
            text = runner.invoke(application, [*path, "-h"]).output
            usage = text.splitlines()[0]
            assert "list[" not in text and "{" not in usage and " range>" not in text, (path, text)
    classify = runner.invoke(app, ["classify", "-h"]).output
    assert classify.startswith("Usage: root classify [OPTIONS] FILE...\n") and re.search(r"\n  FILE\.\.\. <path>  ", classify)
    bundle = runner.invoke(train_app, ["bundle", "-h"]).output
    assert "[OPTIONS] RUN...\n" in bundle.splitlines()[0] + "\n" and "\n  RUN... <path>  " in bundle
    assert "[OPTIONS] BUNDLE\n" in runner.invoke(train_app, ["score", "-h"]).output
    assert "Missing argument 'BUNDLE'" in runner.invoke(train_app, ["score"]).output


def test_help_shows_the_choices_the_training_commands_check():
    """Free text in the code, a closed set in the checks: the help names the set, and the set it
    names is the one the code checks."""
    from edgemon.analysis.frontend import KNOWN_KINDS
    from training.cli import SPLITS, app as train_app
    from training.cv import RECIPES
    from training.hpo import OBJECTIVES, SPACES

    def shown(command: str, option: str) -> str:
        text = runner.invoke(train_app, [command, "-h"]).output
        return re.search(rf"{option} (<[^>]*>)", text)[1]

    assert shown("fit", "--frontend") == shown("cv", "--frontend") == f"<{'|'.join(KNOWN_KINDS)}>"
    assert shown("cv", "--recipe") == f"<{'|'.join(RECIPES)}>"
    assert shown("score", "--split") == f"<{'|'.join(SPLITS)}>"
    assert shown("hpo", "--space") == f"<{'|'.join(SPACES)}>"
    assert shown("hpo", "--objective") == f"<{'|'.join(OBJECTIVES)}>"


def test_adapt_help_names_every_candidate_it_fits():
    """The help named the site head and the thresholds, not the site veto that adapt also fits and
    may choose (the README's five candidates)."""
    from training.adapt_fit import CANDIDATES
    from training.cli import app as train_app

    text = " ".join(runner.invoke(train_app, ["adapt", "-h"]).output.split())
    assert {"head", "thresholds", "veto"} == {part for name in CANDIDATES for part in name.split("+")} - {"evidence"}
    assert "site head" in text and "thresholds" in text and "site veto" in text


def test_sync_help_shows_where_its_batches_start():
    assert re.search(r"\[default: 500; x>=1\]", runner.invoke(app, ["sync", "-h"]).output)
    assert SyncConfig.batch_rows == 500


def test_listen_reads_the_settings_file_and_environment_like_every_command(tmp_path):
    """File < environment < options, checked before any device is opened (it used to read only
    its own options, so these mistakes went unnoticed and the device was opened)."""
    config = tmp_path / "e.toml"
    config.write_text("[listen]\nchannels = 0\n")
    from_file = runner.invoke(app, ["listen", "--config", str(config), "--db", str(tmp_path / "d.db")])
    assert from_file.exit_code == 1
    assert from_file.output.strip() == f"error: {config}: [listen] channels: must be at least 1, got 0"
    from_env = runner.invoke(app, ["listen", "--db", str(tmp_path / "d.db")], env={"EDGEMON_QUEUE_S": "-1"})
    assert from_env.exit_code == 1 and "environment variable EDGEMON_QUEUE_S: must be at least 0" in from_env.output
    from_option = runner.invoke(app, ["listen", "--stall-s", "-1"])
    assert from_option.exit_code == 2 and "option --stall-s: must be at least 0.5" in from_option.output
    deaf = runner.invoke(app, ["listen", "--stall-s", "0"])   # reopened the stream 15 times in 5 s
    assert deaf.exit_code == 2 and "option --stall-s: must be at least 0.5" in deaf.output


# Commands that read no recorder settings: `devices` lists the sound hardware; `fleet` runs on a
# workstation against the fleet's database.
READS_NO_SETTINGS = {"devices", "fleet"}


def test_every_command_reads_the_settings_file_and_environment_one_way(tmp_path):
    """One settings path, for every command the app has (walked, so a new command is included):
    a bad value in the settings file, or in EDGEMON_*, stops each in the same one line."""
    config = tmp_path / "e.toml"
    config.write_text('[watch]\nsettle_s = "soon"\n')
    commands = sorted(set(typer.main.get_command(app).commands) - READS_NO_SETTINGS)
    assert {"watch", "listen", "run", "sync", "status", "config", "review"} <= set(commands)
    for name in commands:
        args = [name, *(["x.wav"] if name == "classify" else [])]   # its one required argument
        from_file = runner.invoke(app, [*args, "--config", str(config)])
        assert (from_file.exit_code, from_file.output.strip()) == (
            1, f"error: {config}: [watch] settle_s: expected a number, got 'soon'"), name
        from_env = runner.invoke(app, args, env={"EDGEMON_SETTLE_S": "soon", "EDGEMON_CONFIG": ""})
        assert (from_env.exit_code, from_env.output.strip()) == (
            1, "error: environment variable EDGEMON_SETTLE_S: expected a number, got 'soon'"), name


def test_options_that_are_not_settings_show_their_components_defaults():
    """An option's default copied from a component's config (not a setting) agrees with it, so
    the help cannot promise one value while the library uses another."""
    review_app = pytest.importorskip("edgemon.review.app")
    root = typer.main.get_command(app)

    def default(path: str, name: str):
        command = root
        for part in path.split():
            command = command.commands[part]
        return next(p.default for p in command.params if p.name == name)

    assert default("fleet status", "min_free_mb") == VisitRules().min_free_mb
    assert default("fleet status", "days") == inspect.signature(collect_fleet).parameters["days"].default
    assert default("sync", "retry_for_s") == SyncConfig(url="").retry_for_s
    config = review_app.ReviewConfig(db=Path("x.db"))
    assert (default("review", "host"), default("review", "port")) == (config.host, config.port)


@pytest.fixture
def empty_db(tmp_path):
    db = tmp_path / "d.db"
    with Store(db):
        pass
    return db


def test_watch_and_status_take_the_directory_the_same_way(empty_db, tmp_path):
    """DIRECTORY is positional in both; --directory stays as an alias for existing scripts."""
    recorder = tmp_path / "moth"
    recorder.mkdir()
    (recorder / "20180301_060000.WAV").write_bytes(b"")
    for args in ([str(recorder)], ["--directory", str(recorder)]):
        result = runner.invoke(app, ["status", *args, "--db", str(empty_db), "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["backlog"]["directory"] == str(recorder.resolve())
    both = runner.invoke(app, ["status", str(recorder), "--directory", str(tmp_path), "--db", str(empty_db)])
    assert both.exit_code == 2 and "give the directory once" in both.output
    shown = runner.invoke(app, ["watch", "--directory", str(tmp_path / "missing"), "--db", str(tmp_path / "w.db")])
    assert shown.exit_code == 1 and "missing" in shown.output


def test_devices_says_when_there_is_none(monkeypatch):
    """A newcomer trial: with no input, `devices` printed its header alone, as if cut short."""
    import edgemon.live.capture

    monkeypatch.setattr(edgemon.live.capture, "list_input_devices", lambda: [])
    shown = CliRunner().invoke(app, ["devices"])
    assert shown.exit_code == 0 and shown.stdout.splitlines() == ["index\tname\thostapi\tchannels\tdefault_rate"]
    assert shown.stderr.startswith("no audio input devices found")


def test_format_json_everywhere_with_json_kept_as_its_alias(empty_db):
    for args in (["status", "--db", str(empty_db)], ["config"], ["devices"]):
        as_format = runner.invoke(app, [*args, "--format", "json"])
        as_alias = runner.invoke(app, [*args, "--json"])
        if args == ["devices"] and as_format.exit_code == 1:   # no PortAudio here: same one-line error
            assert as_alias.exit_code == 1
            continue
        assert as_format.exit_code == 0, as_format.output
        data, alias = json.loads(as_format.output), json.loads(as_alias.output)
        if args[0] == "status":   # free disk space moves between the two calls
            data.pop("disk"), alias.pop("disk")
        assert data == alias
    assert runner.invoke(app, ["config", "--format", "toml"]).output.startswith("# edgemon settings in force")


# --- log lines: timestamped on a terminal, priorities and no timestamp in the journal ------------

def _log_through(tmp_path, journal: bool) -> str:
    """Log records through ``setup_logging`` into a real file that is, or is not, "the journal"."""
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if journal else "8:12345"}
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            console.setup_logging(logging.DEBUG, stream, env)
            log = logging.getLogger("edgemon.test")
            log.debug("detail")
            log.info("watching %s", "/media/moth")
            log.warning("disk low")
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                log.exception("worker failed")
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
    return path.read_text()


def test_journal_lines_carry_priorities_and_no_timestamp(tmp_path):
    lines = _log_through(tmp_path, journal=True).splitlines()
    assert lines[:4] == ["<7>DEBUG edgemon.test: detail", "<6>INFO edgemon.test: watching /media/moth",
                         "<4>WARNING edgemon.test: disk low", "<3>ERROR edgemon.test: worker failed"]
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines[4:])   # the traceback is an error too
    assert any("RuntimeError: boom" in line for line in lines)


def test_a_library_warning_is_one_log_line_with_its_priority(tmp_path):
    """A newcomer trial: watchdog's warning for a directory moved out of the watched tree and back
    went to stderr raw (about 1 KB over two lines, no priority, no time stamp)."""
    import warnings

    path = tmp_path / "stderr"
    with open(path, "w") as stream, warnings.catch_warnings():
        warnings.simplefilter("always")
        st = os.fstat(stream.fileno())
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            console.setup_logging(logging.INFO, stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            warnings.warn("a library\nsays   this " + "x" * 400, RuntimeWarning)
            warnings.warn("Callback with id '1404' already exists for watch <bound method Watch.short_str of "
                          "Watch(wd=3, ...)>. It will be Overwritten.", RuntimeWarning)
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines        # the harmless one at debug, below the level logged
    assert re.fullmatch(r"<4>WARNING edgemon: RuntimeWarning from test_cli\.py:\d+: a library says this x{280}…",
                        lines[0]), lines[0]


def test_terminal_lines_are_stamped_in_utc_whatever_the_host_zone(tmp_path):
    """A newcomer trial: with TZ=Asia/Kuching log lines read 08:58 while status and exports said 00:58Z."""
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kuching"
    time.tzset()
    try:
        terminal = _log_through(tmp_path, journal=False).splitlines()   # JOURNAL_STREAM of another stream
    finally:
        if zone is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = zone
        time.tzset()
    stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d{3}Z INFO edgemon.test: watching", terminal[1])
    assert stamp, terminal[1]
    logged = dt.datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    assert abs((dt.datetime.now(dt.timezone.utc) - logged).total_seconds()) < 600   # UTC, not 8 h ahead


def test_the_command_under_systemd_writes_journal_lines(tmp_path):
    """The real program with stderr connected as systemd connects it: every line has a priority,
    the fatal one-line error included (so ``journalctl -p err`` shows it)."""
    path = tmp_path / "stderr"
    with open(path, "w") as stderr:
        st = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        result = subprocess.run([sys.executable, "-m", "edgemon", "config", "--config", str(tmp_path / "none.toml")],
                                stderr=stderr, stdout=subprocess.PIPE, env=env, timeout=60)
    assert result.returncode == 1
    assert path.read_text() == f"<3>error: config file not found: {tmp_path / 'none.toml'}\n"


# --- edgemon-train: one-line errors and cv progress ----------------------------------------------

def test_training_errors_are_one_line_and_usage_errors_exit_2(tiny_dataset, tmp_path):
    from training.cli import app as train_app

    occupied = tmp_path / "a-file"
    occupied.write_text("")
    cases = [(["hpo", "--data", str(tiny_dataset), "--out", str(tmp_path / "h"), "--space", "weird"], 2,
              "--space must be one of paper, field, not 'weird'"),
             (["hpo", "--data", str(tiny_dataset), "--out", str(tmp_path / "h"), "--storage", "bogus://x",
               "--trials", "1"], 1, "Optuna storage bogus://x: "),        # was a SQLAlchemy traceback
             # a driver not installed was a traceback, and a password was printed (a review)
             (["hpo", "--data", str(tiny_dataset), "--out", str(tmp_path / "h"), "--storage",
               "mysql://u:secretpw@127.0.0.1:1/db", "--trials", "1"], 1, "Optuna storage mysql://u:***@127.0.0.1:1/db: "),
             (["baseline", "--data", str(tiny_dataset), "--out", str(occupied)], 1, str(occupied)),  # OSError
             (["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "f"), "--device", "gpu"], 2,
              "--device must be auto, cpu or cuda[:N], not 'gpu'"),
             (["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "f"), "--device", "cuda:99"], 1,
              "--device cuda:99: this torch")]     # was torch's traceback mid-run
    for args, code, message in cases:
        result = runner.invoke(train_app, args)
        assert result.exit_code == code, (args, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.output
        assert "secretpw" not in result.output


def test_training_value_errors_from_the_thresholds_are_one_line():
    """A ValueError of the search or the thresholds (here: no background window to choose on) is
    an expected failure: one line, exit 1, not a traceback."""
    import numpy as np
    import typer

    from training.cli import _run
    from training.thresholds import choose_thresholds

    none = np.zeros(3, dtype=bool)
    with pytest.raises(typer.Exit) as exited:
        _run(choose_thresholds, np.zeros(3, dtype=int), np.ones(3), none, ("background", "call"), 0, 0.1)
    assert exited.value.exit_code == 1


def test_cv_shows_progress_per_fold_and_epoch(tiny_dataset, tmp_path, caplog):
    from training.cli import app as train_app

    caplog.set_level(logging.INFO, logger="training.cv_progress")
    result = runner.invoke(train_app, ["cv", "--data", str(tiny_dataset), "--recipe", "paper", "--folds", "2",
                                       "--epochs", "2", "--hidden", "4", "--layers", "1", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = [r.getMessage() for r in caplog.records if r.name == "training.cv_progress"]
    epochs = [re.match(r"cv paper-h4l1: (fold \d/2), (epoch \d/2): validation UAR [01]\.\d{3}; "
                       r"\d+m\d\ds elapsed, about \d+m\d\ds left$", line) for line in lines if "epoch" in line]
    assert [m and m.groups() for m in epochs] == [("fold 1/2", "epoch 1/2"), ("fold 1/2", "epoch 2/2"),
                                                 ("fold 2/2", "epoch 1/2"), ("fold 2/2", "epoch 2/2")], lines
    assert [line.split(" done")[0] for line in lines if " done " in line] == [
        "cv paper-h4l1: fold 1/2", "cv paper-h4l1: fold 2/2"]


def test_cv_progress_on_a_terminal_is_a_bar_over_folds_and_epochs(capsys):
    from training.cv_progress import CvProgress

    with CvProgress(terminal=True) as progress:
        for fold in (1, 2):
            for epoch in (1, 2, 3):
                progress({"recipe": "paper", "fold": fold, "folds": 2, "epoch": epoch, "epochs": 3, "uar": 0.5})
            progress({"recipe": "paper", "fold": fold, "folds": 2, "epoch": None, "epochs": None, "uar": None})
        bar = progress.bar
        assert (bar.n, bar.total) == (6, 6)
    assert "cv paper fold 2/2" in capsys.readouterr().err


def test_export_and_info_read_the_settings_file_like_every_command(empty_db, tmp_path):
    """On a unit the database and bundle are named in the settings file; export and info used to
    read only their own options (./edgemon.db, the embedded bundle) and so missed them."""
    config = tmp_path / "e.toml"
    config.write_text(f'db = "{empty_db}"\nmodels = "{tmp_path / "no-bundle"}"\n')
    exported = runner.invoke(app, ["export-detections", "--config", str(config)])
    assert exported.exit_code == 0, exported.output
    assert exported.stdout.startswith("id,device_id,")
    described = runner.invoke(app, ["info", "--config", str(config)])
    assert described.exit_code == 1 and "no-bundle" in described.output


def test_an_unknown_export_format_is_a_usage_error(empty_db):
    """Every --format is a choice: a value outside it exits 2 like any usage error (export's was
    a plain string refused later, exit 1)."""
    result = runner.invoke(app, ["export-detections", "--db", str(empty_db), "--format", "xml"])
    assert result.exit_code == 2 and "xml" in result.output


@pytest.mark.parametrize("args, lists", [(["--help"], True), (["fit", "--help"], True),
                                         (["fit", "--epochs", "1", "--out", "nowhere-run"], False),
                                         (["score", "edgemon/models/default"], False)])
def test_the_training_command_without_its_packages_lists_its_commands_and_says_what_is_missing(args, lists, tmp_path):
    """`scripts/setup.sh` installs the recorder side only: edgemon-train then had no torch and
    crashed with a traceback; later it said so, but even `--help` did (a newcomer trial could not
    see the subcommands). Now the command line needs none of the training packages."""
    blocked = ("import sys\nfor m in ('torch', 'einops', 'optuna', 'onnx', 'sklearn', 'matplotlib'): "
               f"sys.modules[m] = None\nsys.argv = ['edgemon-train', *{args!r}]\n"
               "from training.entry import main; main()")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert "Traceback" not in result.stderr, result.stderr
    if lists:
        assert result.returncode == 0 and result.stdout.startswith("Usage: edgemon-train")
    else:
        assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
            "error: edgemon-train needs the training packages (torch is missing): "
            "run scripts/setup-dev.sh, or pip install 'edgemon[train]'")


def test_info_says_where_the_bundles_figures_come_from():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    # --json as status, config and devices take it (a newcomer trial: "No such option")
    assert json.loads(runner.invoke(app, ["info", "--format", "text", "--json"]).output) == json.loads(result.output)
    provenance = json.loads(result.output)["provenance"]
    assert provenance["trained_on"] and "cv_uar_mean" in provenance["thresholds_from"]


def test_info_as_text_gives_the_lines_a_person_reads_first():
    described = json.loads(runner.invoke(app, ["info"]).output)
    result = runner.invoke(app, ["info", "--format", "text"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"bundle {described['bundle_id']} at {described['path']}"
    assert f"  self-check on this CPU: {described['self_check']['summary']}" in lines
    expected = described["provenance"]["operating_point"]["expected"]
    for label in described["labels"][1:]:   # every call class, with its threshold
        threshold = described["provenance"]["operating_point"]["thresholds"][label]
        assert any(line.startswith(f"    {label} (") and f": {threshold:.2f}, " in line for line in lines), label
        # and the one confident window it needs, where the point asks for one (a newcomer trial)
        opening = described["provenance"]["operating_point"].get("open_threshold", {}).get(label, 0.0)
        mine = next(line for line in lines if line.startswith(f"    {label} ("))
        assert (f"(and one window at {opening:.2f} or more)" in mine) == (opening > 0), mine
    assert any("one window at" in line for line in lines)   # the shipped point has such a class
    assert any(f"{expected['false_per_hour']:.1f} / h ({expected['false_events']} in" in line for line in lines)
    other = expected["chosen_on_other_folds"]
    first = next(i for i, line in enumerate(lines) if "/ h" in line)
    if described["provenance"]["operating_point"].get("from_bundle"):
        # a point kept and measured again: its own figure first, then what choosing anew gives
        assert "measured again" in lines[first] and f"{expected['false_per_hour']:.1f} / h" in lines[first]
        assert "(false events per hour of background audio)" in lines[first]   # what "/ h" counts
        assert "chosen anew" in lines[first + 1] and f": {other['false_per_hour']:.1f} / h" in lines[first + 1]
    else:
        # the figure chosen on the other folds' recorders comes first: it is what a new site can expect
        assert "never heard" in lines[first] and f": {other['false_per_hour']:.1f} / h" in lines[first]
    # what --min-confidence 0.9 gives, and how far to trust the number (an upgrade trial found it
    # only deep in the JSON)
    top = expected["at_min_confidence_0.9"]
    assert f"  --min-confidence 0.9 in grouped CV: {top['events']} events at precision {top['precision']:.2f}, " \
           f"keeping {top['right_kept']:.2f} of the right ones; calibration error " \
           f"{expected['calibration_ece']:.3f} there, larger on recorders it never heard" in lines
    assert "an estimate, fitted on grouped-CV recorders" in next(line for line in lines if "confidence:" in line)


def test_info_puts_the_held_out_figure_first_for_a_point_chosen_on_other_folds(tmp_path):
    """A point chosen by cv-ensemble (no ``from_bundle``): what a new site can expect comes first;
    a grouped-CV count at 0.9 above the bundle's ceiling is explained."""
    from edgemon.analysis.bundle import MANIFEST, default_bundle_path

    copy = tmp_path / "chosen"
    shutil.copytree(default_bundle_path(), copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["operating_point"].pop("from_bundle", None)
    manifest["operating_point"]["expected"]["at_min_confidence_0.9"] = {"events": 5, "precision": 0.8, "right_kept": 0.02}
    for curve in manifest["calibration"].values():   # a final fit whose top stays under 0.9
        curve["y"] = [min(y, 0.85) for y in curve["y"]]
    manifest["confidence_max"] = 0.85
    write_manifest(copy, manifest)
    result = runner.invoke(app, ["info", "--models", str(copy), "--format", "text"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    first = next(i for i, line in enumerate(lines) if "/ h" in line)
    other = manifest["operating_point"]["expected"]["chosen_on_other_folds"]
    assert "never heard" in lines[first] and f": {other['false_per_hour']:.1f} / h" in lines[first]
    assert "on the folds that chose it" in lines[first + 1]
    assert "counts held-out events of grouped CV under per-fold fits" in result.output


def test_info_says_whether_confidence_is_calibrated(tmp_path):
    """A bundle from before calibration still runs; info says its confidence is the raw score."""
    shipped = runner.invoke(app, ["info"])
    assert shipped.exit_code == 0 and json.loads(shipped.output)["confidence"].startswith("calibrated")
    said, top = json.loads(shipped.output)["confidence"], json.loads(shipped.output)["confidence_max"]
    # Its grouped-CV figure at 0.9 is not what --min-confidence 0.9 exports (refused: above the ceiling).
    assert (top < 0.9) == (f"never exceeds {top:g}, so --min-confidence 0.9 is refused" in said)
    older = tmp_path / "older"
    shutil.copytree(default_bundle_path(), older)
    manifest = json.loads((older / MANIFEST).read_text())
    for key in ("operating_point", "calibration", "calibration_input", "calibration_fits"):
        del manifest[key]
    write_manifest(older, manifest)
    result = runner.invoke(app, ["info", "--models", str(older)])
    assert result.exit_code == 0 and json.loads(result.output)["confidence"].startswith("uncalibrated")


def test_watch_warns_when_the_database_holds_another_devices_rows(tmp_path):
    from devtools.recorder_db import make_recorder
    db = make_recorder(tmp_path / "unit.db", "rec-a", files=1, per_file=1, heartbeats=1)
    empty = tmp_path / "card"
    empty.mkdir()
    for device, warned in (("rec-a", False), ("rec-b", True)):
        done = subprocess.run([sys.executable, "-m", "edgemon", "watch", str(empty), "--db", str(db),
                               "--device-id", device, "--until-idle"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if "newest rows were stored by device" in line]
        assert bool(said) == warned, done.stderr
        if warned:
            assert "'rec-a'" in said[0] and "'rec-b'" in said[0] and "--device-id rec-a" in said[0]


def test_classify_says_when_a_recording_was_not_read_to_its_end(duet_recording, tmp_path):
    """Found by a review: a FLAC cut short was analysed up to the cut with nothing said."""
    x = soundfile.read(duet_recording, dtype="float32")[0]
    whole = tmp_path / "whole.flac"
    soundfile.write(whole, np.tile(x, 4), 16000)
    cut = tmp_path / "20180301_070000.flac"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 2 // 3])
    done = subprocess.run([sys.executable, "-m", "edgemon", "classify", str(cut), "--format", "csv"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "decoding stopped at" in done.stderr and "20180301_070000.flac" in done.stderr


def test_classify_says_when_a_wav_is_shorter_than_its_header_and_gives_local_times(duet_recording, tmp_path):
    """Found by a newcomer trial: watch noted a WAV cut short, classify said nothing; and with a
    time zone set, classify's CSV left start_local empty (the zone given as an option here, which
    classify lacked until the twentieth session)."""
    cut = tmp_path / "20180301_060000.WAV"
    cut.write_bytes(duet_recording.read_bytes()[:duet_recording.stat().st_size * 2 // 3])
    done = subprocess.run([sys.executable, "-m", "edgemon", "classify", str(cut), "--format", "csv",
                           "--timezone", "Asia/Kuching"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "20180301_060000.WAV: header inconsistent (data chunk declares" in done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and rows[0]["start_local"].startswith("2018-03-01T14:00") and rows[0]["start_local"].endswith("+08:00")


def test_classify_takes_a_directory_of_recordings(duet_recording, tmp_path):
    """A newcomer trial: `classify DIR` was refused ("is a directory, not an audio file")."""
    card = tmp_path / "card"
    (card / "deeper").mkdir(parents=True)
    (card / "deeper" / "20180301_060000.WAV").write_bytes(duet_recording.read_bytes())
    (card / "CONFIG.TXT").write_text("not audio")
    result = runner.invoke(app, ["classify", str(card), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    # the source as watch stores it, so that a script joins classify's rows with an export's (a review)
    assert rows and {r["source"] for r in rows} == {"deeper/20180301_060000.WAV"}
    table = runner.invoke(app, ["classify", str(card)])
    assert str(card / "deeper" / "20180301_060000.WAV") in table.stdout   # a person sees where it is
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["classify", str(tmp_path / "empty")])
    assert empty.exit_code == 1 and "a directory without WAV or FLAC recordings" in empty.output


def test_classify_table_shows_local_times_with_a_time_zone(duet_recording, tmp_path):
    """A newcomer trial: `classify --timezone` changed nothing in the table (only csv had
    start_local), and a tab in a file name broke its columns."""
    odd = tmp_path / "tab\there 20180301_060000.WAV"
    odd.write_bytes(duet_recording.read_bytes())
    result = runner.invoke(app, ["classify", str(odd), "--timezone", "Asia/Kuching"])
    assert result.exit_code == 0, result.output
    header, first = result.stdout.splitlines()[:2]
    assert header.split()[:5] == ["source", "start_s", "end_s", "start_utc", "start_local"]
    assert "\t" not in result.stdout and "tab\\there" in first and "+08:00" in first
    plain = runner.invoke(app, ["classify", str(duet_recording)])
    assert "start_local" not in plain.stdout.splitlines()[0]


def test_watch_and_classify_read_a_local_time_recorders_names_in_its_clock_zone(duet_recording, tmp_path, caplog):
    """A Song Meter names files by its local clock with no offset anywhere: they were stored as
    UTC, 8 h late on Borneo, with no setting to say otherwise."""
    caplog.set_level("INFO", logger="edgemon")
    recorder = tmp_path / "sm4"
    recorder.mkdir()
    shutil.copy(duet_recording, recorder / "SMM07257_20180301_060000.wav")
    db = tmp_path / "d.db"
    watched = runner.invoke(app, ["watch", str(recorder), "--db", str(db), "--until-idle",
                                  "--clock-timezone", "Asia/Kuching"])
    assert watched.exit_code == 0, watched.output
    assert "(names without a UTC offset read in Asia/Kuching)" in caplog.text   # said where it starts
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT start_utc FROM files").fetchone()[0].startswith("2018-02-28T22:00:00")
        starts = [r[0] for r in conn.execute("SELECT start_utc FROM detections")]
    assert starts and all(t.startswith("2018-02-28T22:0") for t in starts), starts
    classified = runner.invoke(app, ["classify", str(recorder), "--format", "csv", "--clock-timezone", "Asia/Kuching"])
    assert classified.exit_code == 0, classified.output
    rows = list(csv.DictReader(io.StringIO(classified.stdout)))
    assert [r["start_utc"][:16] for r in rows] == [t[:16] for t in starts]
    wrong = runner.invoke(app, ["classify", str(recorder), "--clock-timezone", "asia/kuching"])
    assert wrong.exit_code == 2 and "unknown IANA time zone 'asia/kuching'" in wrong.output
    assert "did you mean 'Asia/Kuching'" in wrong.output


def test_classify_refuses_a_pipe_named_like_a_recording_and_goes_on(duet_recording, tmp_path):
    """A newcomer trial: `edgemon classify` on a FIFO called *.WAV waited for ever, and the other
    files of its directory were never printed (watch quarantines such a file)."""
    card = tmp_path / "card"
    card.mkdir()
    (card / "20180301_060000.WAV").write_bytes(duet_recording.read_bytes())
    os.mkfifo(card / "20180301_070000.WAV")
    done = subprocess.run([sys.executable, "-m", "edgemon", "classify", str(card)], capture_output=True,
                          text=True, timeout=120)
    assert "20180301_070000.WAV: not a regular file (a pipe or a device)" in done.stderr
    assert "gibbon_duet" in done.stdout and done.returncode == 1
