"""What every ``edgemon`` command shares: the Typer app, the options that are settings, the
settings in force, and the one-line failure (see ``edgemon.console`` for the exit statuses).
The commands live in ``edgemon.cli`` and, grouped by what they serve, ``edgemon.cli_review``
and ``edgemon.cli_fleet``."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from edgemon import console
from edgemon.config import BY_NAME, OptionError, ServiceConfig, Settings, cli_overrides, load_settings
from edgemon.errors import EdgemonError

# rich_markup_mode=None: plain help, so "[watch]" stays text and flags show no "<bool>" value.
app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]}, epilog=console.EPILOG,
                  help="Species detections from field recorders, on the recorder.")
console.plain_help_names()   # FILE... and <path> in the help, not {FILES} and <list[Path]>


def setting_option(name: str) -> Any:
    """The option of setting ``name``: flag, help and shown default from the registry. Its
    parameter defaults to None (not given): the settings file and environment then decide."""
    s = BY_NAME[name]
    return typer.Option(s.option, help=s.help if s.default is None else f"{s.help}  [default: {s.default}]",
                        show_default=False, readable=False)   # unreadable paths: our own one-line errors


class TextFormat(str, enum.Enum):
    text = "text"
    json = "json"


class ConfigFormat(str, enum.Enum):
    toml = "toml"
    json = "json"


class ClassifyFormat(str, enum.Enum):
    table = "table"
    csv = "csv"


class ExportFormat(str, enum.Enum):
    csv = "csv"
    birdnet = "birdnet"
    jsonl = "jsonl"
    raven = "raven"


ModelsOpt = Annotated[Optional[Path], setting_option("models")]
DbOpt = Annotated[Optional[Path], setting_option("db")]
ThreadsOpt = Annotated[Optional[int], setting_option("threads")]
DeviceIdOpt = Annotated[Optional[str], setting_option("device_id")]
TimezoneOpt = Annotated[Optional[str], setting_option("timezone")]
ClockTimezoneOpt = Annotated[Optional[str], setting_option("clock_timezone")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Settings file (TOML; default: $EDGEMON_CONFIG, else /etc/edgemon/edgemon.toml if present). Environment variables and options override it.", readable=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
# One way for `watch` and `status`: DIRECTORY positional; --directory kept for existing scripts.
DirectoryArg = Annotated[Optional[Path], typer.Argument(
    metavar="DIRECTORY", show_default=False,
    help="Recorder directory (recursive); default: `directory` in [watch] of the settings file.", readable=False)]
DirectoryAlias = Annotated[Optional[Path], typer.Option("--directory", hidden=True, help="Same as DIRECTORY.", readable=False)]


@app.callback()
def _main(version: Annotated[bool, console.version_option("edgemon")] = False):
    """Species detections from field recorders, on the recorder."""


def fail(exc: EdgemonError) -> typer.Exit:
    """The one-line error for ``exc``; exit 2 for a refused option, 1 for every other failure."""
    return console.error(str(exc), console.EXIT_USAGE if isinstance(exc, OptionError) else console.EXIT_FAILURE)


def settings_in_force(ctx: typer.Context, config: Path | None, directory_alias: Path | None = None) -> Settings:
    """The settings in force for this command, the one way every command reads them: defaults <
    settings file < environment < the options given on its command line."""
    given = cli_overrides(ctx)
    if directory_alias is not None:
        if given.get("directory", directory_alias) != directory_alias:
            raise OptionError("give the directory once: DIRECTORY or --directory")
        given["directory"] = directory_alias
    return load_settings(config, given)


def service_in_force(ctx: typer.Context, config: Path | None, directory_alias: Path | None = None) -> ServiceConfig:
    """``settings_in_force(...)``, typed (for commands that need the values, not where they came from)."""
    return settings_in_force(ctx, config, directory_alias).service
