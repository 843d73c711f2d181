"""The registry of settings: each one's name, TOML table, type, default, help and limits
(``SETTINGS``), and how a value given for one, from a file, the environment or an option, is
checked and said to come from where it came (``checked``, ``from_text``, ``where_from``).
Loading the settings in force from those three places is ``edgemon.config``'s job.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgemon.errors import EdgemonError
from edgemon.safetext import shown
from edgemon.utc import fixed_offset

ENV_PREFIX = "EDGEMON_"
COMMAND_LINE = "command line"


class ConfigError(EdgemonError):
    """A settings file, environment variable or option holds something edgemon cannot use."""


class OptionError(ConfigError):
    """A command-line option holds something edgemon cannot use (a usage error: exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its name, TOML table (None: top level), type, default (None: unset) and help."""

    name: str
    table: str | None
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    file: bool = False      # a path edgemon opens as a file: an existing directory is refused

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("mode", None, str, "watch", "What the service (`edgemon run`) does: watch a directory or listen to a microphone.",
            choices=("watch", "listen")),
    Setting("db", None, Path, Path("edgemon.db"), "Detections database (SQLite).", file=True),
    Setting("models", None, Path, None, "Model bundle directory (unset: the embedded bundle)."),
    Setting("device_id", None, str, "edgemon", "Recorder/site id stored with every detection (sync: the id this database's rows were stored under; another is refused)."),
    Setting("threads", None, int, 1, "onnxruntime threads.", minimum=1),
    Setting("latitude", None, float, None, "Recorder latitude, decimal degrees (WGS84); sent to the fleet database.",
            minimum=-90, maximum=90),
    Setting("longitude", None, float, None, "Recorder longitude, decimal degrees (WGS84).", minimum=-180, maximum=180),
    Setting("timezone", None, str, None, "Recorder's IANA time zone (e.g. 'Asia/Kuching'): the local times of exports (start_local), status and the review page's days and hours."),
    Setting("clock_timezone", None, str, None, "Time zone the recorder's clock was set to, for file names and header times that give no UTC offset: a fixed offset such as 'UTC+1' for a Song Meter (it makes no summer-time change), or an IANA name (e.g. 'Europe/Berlin') for a clock that changes with summer time; unset: UTC, an AudioMoth's default. An offset the header gives wins."),

    Setting("directory", "watch", Path, None, "Recorder directory to watch (recursive)."),
    Setting("settle_s", "watch", float, 5.0, "Seconds a file must stay unchanged before it is read.", minimum=0),
    Setting("rescan_s", "watch", float, 30.0, "Seconds between rescans of the directory (each lists again only the folders changed since; one an hour stats every file).", minimum=0),
    Setting("incomplete_grace_s", "watch", float, 120.0, "Seconds a WAV or FLAC header not yet finalised is waited for after the file last grew.", minimum=0),
    Setting("retry_s", "watch", float, 60.0, "Seconds before a file that failed (or could not be stored) is tried again.", minimum=0),

    Setting("device", "listen", str, None, "Input device: index or name substring (unset: the system's default input)."),
    Setting("sample_rate", "listen", float, None, "Capture rate in Hz (unset: the device's own).", minimum=1),
    Setting("channels", "listen", int, 1, "Channels to capture (mixed to mono).", minimum=1),
    Setting("clips", "listen", Path, None, "Directory of detection clips (FLAC): listen saves each detection's audio there, review plays them (unset: no clips)."),
    # At most a minute: the ring of recent audio holds both at once (1e7 s asked for 298 GiB: a review).
    Setting("clip_pre_s", "listen", float, 2.0, "Seconds of audio kept before a detection.", minimum=0, maximum=60),
    Setting("clip_post_s", "listen", float, 2.0, "Seconds of audio kept after a detection.", minimum=0, maximum=60),
    Setting("clips_max_mb", "listen", float, 500.0, "Clip directory budget in MB; further clips are skipped.", minimum=0),
    Setting("queue_s", "listen", float, 30.0, "Seconds of audio queued for analysis before blocks are dropped.", minimum=0),
    Setting("stall_s", "listen", float, 5.0, "Seconds without audio before the stream is reopened.", minimum=0.5),
    Setting("backoff_max_s", "listen", float, 60.0, "Longest wait between attempts to reopen the device.", minimum=0),
    Setting("flush_s", "listen", float, 10.0, "Seconds between coverage writes.", minimum=0),

    Setting("heartbeat_s", "health", float, 300.0, "Seconds between heartbeat rows in the database.", minimum=0.1),
    Setting("progress_timeout_s", "health", float, 240.0,
            "Withhold systemd watchdog pings once the pipeline has made no progress for this long.", minimum=1),

    Setting("min_free_mb", "disk", float, 200.0,
            "Free space (MB, where the database is) below which no new work starts: back-pressure, not a crash.", minimum=0),
    Setting("clips_min_free_mb", "disk", float, 1000.0, "Free space (MB) below which no clips are saved.", minimum=0),

    Setting("sync_url", "sync", str, None,
            "Fleet PostgreSQL database (postgresql://user@host/db, no password: use a 0600 passfile); unset: no sync."),
    Setting("sync_interval_s", "sync", float, 900.0, "Seconds between sync sessions of the service.", minimum=1),
)
BY_NAME: Mapping[str, Setting] = MappingProxyType({s.name: s for s in SETTINGS})
TABLES = ("watch", "listen", "health", "disk", "sync")

def expand_home(path: Path, where: str, error: type[ConfigError] = ConfigError) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; ``error`` naming ``where`` when there
    is no such home (a review: a traceback)."""
    try:
        return path.expanduser()
    except RuntimeError:
        raise error(f"{where}: {str(path)!r}: no home directory for {path.parts[0]!r}") from None


def checked(s: Setting, value: Any, where: str, error: type[ConfigError] = ConfigError) -> Any:
    """``value`` (from TOML or an option) as the setting's type, or ``error`` saying why not."""
    if value is None:
        if s.default is not None:
            raise error(f"{where}: a value is required")
        return None
    if s.kind is bool:
        ok = isinstance(value, bool)
    elif s.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif s.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif s.kind is Path:
        ok = isinstance(value, (str, Path)) and str(value) != ""
        # "~/card" in a settings file: no shell expands it there (a newcomer trial: "no such directory")
        value = expand_home(Path(value), where, error) if ok else value
    else:  # str; an integer is taken as its text (a device index, say)
        ok = isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != ""
        value = str(value) if ok else value
    if not ok:
        raise error(f"{where}: expected {kind_name(s.kind)}, got {value!r}")
    # nan passes every comparison with a minimum, and a wait of nan or inf seconds spins or never
    # ends (queue.get(timeout=nan) busy-loops): no setting takes a non-finite number.
    if s.kind is float and not math.isfinite(value):
        raise error(f"{where}: must be a finite number, got {value!r}")
    if s.choices and value not in s.choices:
        raise error(f"{where}: must be one of {', '.join(s.choices)}, not {value!r}")
    if s.minimum is not None and value < s.minimum:
        raise error(f"{where}: must be at least {s.minimum:g}, got {value!r}")
    if s.maximum is not None and value > s.maximum:
        raise error(f"{where}: must be at most {s.maximum:g}, got {value!r}")
    if s.name == "device_id" and re.search("[\ud800-\udfff]", value):
        # bytes that are not UTF-8 (typed in a Latin-1 terminal, or read under an ASCII locale)
        # were "a control or invisible character", which sent people looking for one
        raise error(f"{where}: '{shown(value)}' holds bytes that are not text in this locale's encoding "
                    f"({sys.getfilesystemencoding()}): give it in UTF-8, under a UTF-8 locale (LANG=C.UTF-8)")
    if s.name == "device_id" and not value.isprintable():
        # It names the recorder in every row sent to the fleet: a NUL never reached PostgreSQL (a
        # season that never synced, the error naming no setting), a newline forged report lines.
        raise error(f"{where}: {value!r} holds a control or invisible character; give plain text (it names "
                    f"the recorder in the fleet database and its reports)")
    if s.name == "timezone":   # else the first nightly export, weeks later, fails on it
        _check_zone(value, where, error)
    if s.name == "clock_timezone" and fixed_offset(value) is None:   # a Song Meter's "UTC+1" is one
        _check_zone(value, where, error, ", nor a fixed offset such as 'UTC+8'")
        _refuse_posix_signs(value, where, error)
    if s.file:
        try:
            is_dir = value.is_dir()
        except OSError as e:  # a directory this user may not search (the service's, to an admin)
            raise error(f"{where}: {value}: cannot be reached ({e.strerror or e}); run as a user who may read it") from None
        if is_dir:   # SQLite would say only "disk I/O error"
            raise error(f"{where}: {value} is a directory, not a file")
    return value


def from_text(s: Setting, text: str, where: str, error: type[ConfigError] = ConfigError) -> Any:
    """An environment variable's (or option's) text as the setting's type; empty text unsets an
    optional one."""
    text = text.strip()
    if text == "" and s.default is None:
        return None
    try:
        if s.kind is bool:
            if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(text)
            parsed: Any = text.lower() in ("1", "true", "yes", "on")
        elif s.kind is float:
            parsed = float(text)
        elif s.kind is int:
            parsed = int(text)
        else:
            parsed = text
    except ValueError:
        raise error(f"{where}: expected {kind_name(s.kind)}, got {text!r}") from None
    return checked(s, parsed, where, error)


def _check_zone(name: str, where: str, error, other: str = "") -> None:
    """An IANA zone this host knows, spelt as the database spells it (a lower-case 'asia/kuching'
    is not found by the exports on Linux); ``other`` names what else the setting takes."""
    import zoneinfo

    known = zoneinfo.available_timezones()   # read from the disk: once
    if name in known or name == "UTC":
        return
    spelt = {zone.lower(): zone for zone in known}.get(name.lower())
    hint = f" (did you mean {spelt!r}?)" if spelt else " (e.g. 'Asia/Kuching')"
    raise error(f"{where}: unknown IANA time zone {name!r}{hint}{other}")


_POSIX_OFFSET = re.compile(r"(?:Etc/)?GMT([+-])(\d{1,2})")


def _refuse_posix_signs(name: str, where: str, error) -> None:
    """Refuse 'Etc/GMT+8' as a clock zone: POSIX inverts its sign, so it is UTC-8, and a recorder
    on Borneo (UTC+8) set so had every recording 16 h off without a word (a Borneo trial). The
    fixed offset the clock setting takes says either meaning plainly."""
    m = _POSIX_OFFSET.fullmatch(name)
    if m and int(m[2]):
        meant, inverted = f"UTC{m[1]}{int(m[2])}", f"UTC{'-' if m[1] == '+' else '+'}{int(m[2])}"
        raise error(f"{where}: {name!r} is {inverted} (its sign is POSIX's, the opposite of what it reads): "
                    f"write {inverted!r}, or {meant!r} if that is the recorder's offset")


def where_from(name: str, source: str) -> str:
    """Where a setting's value came from (``Settings.sources[name]``), as load-time errors say it."""
    s = BY_NAME[name]
    if source.startswith("env "):
        return f"environment variable {s.env}"
    if source == COMMAND_LINE:
        return f"option {s.option}"
    return f"{source}: [{s.table}] {name}" if s.table else f"{source}: {name}"


def kind_name(kind: type) -> str:
    return {bool: "true or false", float: "a number", int: "a whole number", Path: "a path"}.get(kind, "text")


def did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
