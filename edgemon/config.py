"""Settings of the daemon: one TOML file, overridden by environment variables, overridden by
command-line options. ``edgemon config`` prints what is in force and where each value came from.

The file is ``--config PATH``, else ``$EDGEMON_CONFIG``, else /etc/edgemon/edgemon.toml when it
exists (see deploy/edgemon.toml)::

    mode = "watch"
    db = "/var/lib/edgemon/edgemon.db"
    device_id = "site-07"

    [watch]
    directory = "/media/audiomoth"

Every setting has one name, used alike as TOML key (in its table), environment variable
(``EDGEMON_`` + the name in upper case: ``EDGEMON_SETTLE_S``) and command-line option
(``--settle-s``). An unknown key, a key in the wrong table, a value of the wrong type, a number
that is not finite (``nan``, ``inf``) or a database path that is a directory is an error naming
where the value came from: a typo must never silently run on the default.

Values leave this module typed, never as a dict of settings: ``Settings.service`` is a frozen
``ServiceConfig`` with one attribute per setting, and it builds each component's own frozen config
(``WatchConfig``, ``DiskBudget``, ``HealthConfig`` ...). Every command of ``edgemon.cli`` takes its
options for settings from the registry (``edgemon.settings_registry``) and reads them through
``load_settings``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from edgemon.utc import fixed_offset
from edgemon.settings_registry import (BY_NAME, COMMAND_LINE, ENV_PREFIX, SETTINGS, TABLES, ConfigError, OptionError,
                                       checked, did_you_mean, expand_home, from_text, where_from)

if TYPE_CHECKING:   # for annotations only; see ServiceConfig for why they are imported late
    from edgemon.files.watcher import WatchConfig
    from edgemon.health import HealthConfig
    from edgemon.live.worker import ListenConfig
    from edgemon.storage.disk_budget import DiskBudget

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("/etc/edgemon/edgemon.toml")
CONFIG_ENV = "EDGEMON_CONFIG"
DEFAULT = "default"


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """The settings in force, typed: one attribute per setting of ``SETTINGS`` (same name, same
    order, no defaults of its own: those live in the registry alone); ``load_settings(...).service``.
    Commands and the daemon read ``service.db``, never ``settings["db"]``, and hand each component
    only its own frozen config (``watch_config()``, ``health_config()`` ...). Paths are ``Path``;
    an unset optional setting is None."""

    mode: str
    db: Path
    models: Path | None
    device_id: str
    threads: int
    latitude: float | None
    longitude: float | None
    timezone: str | None
    clock_timezone: str | None

    directory: Path | None
    settle_s: float
    rescan_s: float
    incomplete_grace_s: float
    retry_s: float

    device: str | None
    sample_rate: float | None
    channels: int
    clips: Path | None
    clip_pre_s: float
    clip_post_s: float
    clips_max_mb: float
    queue_s: float
    stall_s: float
    backoff_max_s: float
    flush_s: float

    heartbeat_s: float
    progress_timeout_s: float

    min_free_mb: float
    clips_min_free_mb: float

    sync_url: str | None
    sync_interval_s: float

    config_file: Path | None = None   # the settings file they came from (None: none), for messages

    # The component configs are imported where they are built, not at the top: importing the
    # watcher, health and clip modules costs every command ~0.5 s at start (numpy, onnxruntime),
    # and the listen pieces load PortAudio, which watch mode never needs.
    def watch_config(self, until_idle: bool = False) -> WatchConfig:
        """``WatchConfig`` of ``directory`` and the [watch] settings; ConfigError without a directory."""
        from edgemon.files.watcher import WatchConfig

        if self.directory is None:
            # `run` takes no DIRECTORY (the service reads its settings): named as each command takes it
            raise ConfigError("no directory to watch: `edgemon watch DIRECTORY`, or for either command "
                              f"EDGEMON_DIRECTORY or `directory` in [watch] of {self.config_file or DEFAULT_PATH}")
        return WatchConfig(root=self.directory, device_id=self.device_id, settle_s=self.settle_s,
                           rescan_s=self.rescan_s, incomplete_grace_s=self.incomplete_grace_s,
                           retry_s=self.retry_s, until_idle=until_idle, clock_zone=self.clock_zone())

    def zone(self) -> zoneinfo.ZoneInfo | None:
        """The zone of ``timezone`` (checked with the settings), the one times are shown in; None
        when unset (UTC)."""
        return None if self.timezone is None else zoneinfo.ZoneInfo(self.timezone)

    def clock_zone(self) -> dt.tzinfo | None:
        """The zone of ``clock_timezone`` (checked with the settings): a fixed offset ('UTC+1'),
        else an IANA zone; None when unset (UTC)."""
        if self.clock_timezone is None:
            return None
        return fixed_offset(self.clock_timezone) or zoneinfo.ZoneInfo(self.clock_timezone)

    def listen_config(self, duration_s: float | None = None) -> ListenConfig:
        """``ListenConfig`` of the [listen] settings (clips only when ``clips`` is set)."""
        from edgemon.live.capture import CaptureConfig
        from edgemon.live.clips import ClipConfig
        from edgemon.live.worker import ListenConfig

        return ListenConfig(
            capture=CaptureConfig(device=self.device, sample_rate=self.sample_rate, channels=self.channels,
                                  queue_s=self.queue_s, stall_s=self.stall_s, backoff_max_s=self.backoff_max_s),
            device_id=self.device_id, flush_s=self.flush_s, duration_s=duration_s,
            clips=None if self.clips is None else ClipConfig(self.clips, self.clip_pre_s, self.clip_post_s,
                                                             self.clips_max_mb, min_free_mb=self.clips_min_free_mb))

    def health_config(self) -> HealthConfig:
        from edgemon.health import HealthConfig

        return HealthConfig(heartbeat_s=self.heartbeat_s, progress_timeout_s=self.progress_timeout_s)

    def disk_budget(self) -> DiskBudget:
        from edgemon.storage.disk_budget import DiskBudget

        return DiskBudget(min_free_mb=self.min_free_mb, clips_min_free_mb=self.clips_min_free_mb)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The settings in force: each value and where it came from ('default', the file's path,
    'env NAME' or 'command line'); ``service`` holds the same values typed. ``values`` and
    ``sources`` serve the code that treats every setting alike (``edgemon config``, the log,
    the fleet's settings hash)."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]
    file: Path | None = None

    @functools.cached_property   # frozen all the same: it is built once, from frozen values
    def service(self) -> ServiceConfig:
        return ServiceConfig(**self.values, config_file=self.file)

    def as_json(self) -> dict:
        """``{name: {"value": ..., "source": ..., "table": ...}}``; paths as text."""
        return {s.name: {"value": _plain(_masked(self.values[s.name])), "source": self.sources[s.name], "table": s.table}
                for s in SETTINGS}

    def describe(self) -> str:
        """The settings as TOML, each line commented with where its value came from."""
        lines = ["# edgemon settings in force; the comment on each line says where it came from",
                 f"# config file: {self.file if self.file else 'none'}"]
        for table in (None,) + TABLES:
            if table:
                lines += ["", f"[{table}]"]
            rows = []
            for s in (s for s in SETTINGS if s.table == table):
                value = _masked(self.values[s.name])
                text = f"# {s.name} = (unset)" if value is None else f"{s.name} = {_toml_value(value)}"
                rows.append((text, self.sources[s.name]))
            width = max(len(t) for t, _ in rows)
            lines += [f"{t:<{width}}  # {src}" for t, src in rows]
        return "\n".join(lines) + "\n"

    def log(self, logger: logging.Logger) -> None:
        """One line per setting not at its default (so the journal says how the unit ran)."""
        logger.info("settings from %s", self.file or "defaults")
        for s in SETTINGS:
            if self.sources[s.name] != DEFAULT:
                logger.info("setting %s = %s (%s)", s.name, _plain(_masked(self.values[s.name])), self.sources[s.name])


def load_settings(config: str | Path | None = None, cli: Any = None, env: Mapping[str, str] | None = None,
                  default_path: Path | None = DEFAULT_PATH) -> Settings:
    """Defaults, then the TOML file, then ``EDGEMON_*`` environment variables, then ``cli``.

    ``config``: the file (None: ``$EDGEMON_CONFIG``, else ``default_path`` if it exists, else no
    file). ``cli``: a mapping of setting name to value, or a click/typer context, from which only
    the options really given on the command line are taken. ``env`` defaults to ``os.environ``.
    """
    env = os.environ if env is None else env
    values = {s.name: s.default for s in SETTINGS}
    sources = {s.name: DEFAULT for s in SETTINGS}

    path = _config_path(config, env, default_path)
    if path is not None:
        for name, value in _read_file(path).items():
            values[name], sources[name] = value, str(path)
    for s in SETTINGS:
        if s.env in env:
            sources[s.name] = f"env {s.env}"
            values[s.name] = from_text(s, env[s.env], where_from(s.name, sources[s.name]))
    _warn_unknown_env(env)
    for name, value in _cli_values(cli).items():
        values[name], sources[name] = checked(BY_NAME[name], value, where_from(name, COMMAND_LINE),
                                               OptionError), COMMAND_LINE
    return Settings(MappingProxyType(values), MappingProxyType(sources), path)


def cli_overrides(ctx: Any) -> dict[str, Any]:
    """The settings given on the command line of a click/typer command (not its defaults)."""
    # By name: typer vendors its own copy of click, so the enum class differs between versions.
    return {name: value for name, value in ctx.params.items()
            if name in BY_NAME and getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}


def parse_options(args: list[str]) -> dict[str, Any]:
    """``['--settle-s', '3', '--db=x.db']`` as settings (for ``edgemon config``, to preview what a
    command given these options would run with)."""
    found: dict[str, Any] = {}
    by_option = {s.option: s for s in SETTINGS}
    i = 0
    while i < len(args):
        option, sep, text = args[i].partition("=")
        setting = by_option.get(option)
        if setting is None:
            raise OptionError(f"unknown option {option}{did_you_mean(option, by_option)}")
        if not sep:
            if i + 1 >= len(args):
                raise OptionError(f"option {option} needs a value")
            i += 1
            text = args[i]
        found[setting.name] = from_text(setting, text, f"option {option}", OptionError)
        i += 1
    return found


def _cli_values(cli: Any) -> dict[str, Any]:
    if cli is None:
        return {}
    if hasattr(cli, "get_parameter_source"):
        return cli_overrides(cli)
    unknown = [name for name in cli if name not in BY_NAME]
    if unknown:
        raise OptionError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return dict(cli)


def _config_path(config: str | Path | None, env: Mapping[str, str], default_path: Path | None) -> Path | None:
    if config is not None or env.get(CONFIG_ENV):
        path = expand_home(Path(config if config is not None else env[CONFIG_ENV]),
                           "--config" if config is not None else f"env {CONFIG_ENV}")
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory: give the TOML file in it")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    return default_path if default_path is not None and default_path.is_file() else None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            # A byte-order mark (Windows editors save UTF-8 with one) is no TOML: "Invalid
            # statement (at line 1, column 1)" said nothing of it.
            data = tomllib.loads(f.read().removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:   # TOML is UTF-8; a file saved as Latin-1 fails before parsing
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); TOML files are UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    found: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in TABLES:
                raise ConfigError(f"{path}: unknown table [{key}]{did_you_mean(key, TABLES)}")
            for name, inner in value.items():
                found[name] = _file_value(path, key, name, inner)
        else:
            found[key] = _file_value(path, None, key, value)
    return found


def _file_value(path: Path, table: str | None, name: str, value: Any) -> Any:
    where = f"[{table}] {name}" if table else name
    setting = BY_NAME.get(name)
    if setting is None:
        raise ConfigError(f"{path}: unknown setting {where}{did_you_mean(name, list(BY_NAME))}")
    if setting.table != table:
        home = f"table [{setting.table}]" if setting.table else "the top level (before any table)"
        raise ConfigError(f"{path}: {name} belongs in {home}, not {'[' + table + ']' if table else 'the top level'}")
    return checked(setting, value, where_from(name, str(path)))


# EDGEMON_* variables that are not settings but are read elsewhere (the review token; the dev
# setup's torch choice; test hooks).
OTHER_ENV = (CONFIG_ENV, "EDGEMON_REVIEW_TOKEN", "EDGEMON_TORCH", "EDGEMON_TORCH_INDEX", "EDGEMON_TORCH_CPU_INDEX",
             "EDGEMON_TEST_DIE_ON", "EDGEMON_TEST_CUTS")


def _warn_unknown_env(env: Mapping[str, str]) -> None:
    """A misspelt ``EDGEMON_*`` variable is said, not silently ignored (a misspelt key of the
    settings file is an error; the environment may hold variables of other tools, so a warning)."""
    known = {s.env for s in SETTINGS} | set(OTHER_ENV)
    for name in sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known):
        log.warning("environment variable %s is not an edgemon setting; ignored%s", name, did_you_mean(name, known))


def _masked(value: Any) -> Any:
    """A setting as it may be shown or logged: a password in a URL (``user:secret@``,
    ``password=secret``) as ``***``. ``sync`` refuses such a URL; until then it must not be echoed."""
    if not isinstance(value, str) or "://" not in value:
        return value
    value = re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", value)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", value)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)
