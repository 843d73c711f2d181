"""What both command lines (``edgemon``, ``edgemon-train``) share: exit statuses, the one-line
error, ``--version``, and log lines fit for a terminal or for the systemd journal.

Exit statuses::

    0  done
    1  the command ran and failed: the one line on stderr says why (a missing file, a bad
       settings file or environment variable, a broken database or bundle ...)
    2  the command line is wrong: unknown command or option, missing argument, a value of the
       wrong type, outside its choices or refused by the settings' checks (``--settle-s nan``)

Under systemd, stderr is the journal: journald stamps each line itself and reads a ``<N>`` prefix
as the line's priority (sd-daemon(3)), so ``journalctl -p err`` shows errors. There the lines
carry that prefix and no timestamp; on a terminal or in a file they carry a timestamp.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import typer

from edgemon.safetext import shown

EXIT_FAILURE = 1
EXIT_USAGE = 2
EPILOG = ("Exit status: 0 done; 1 the command failed (one line on stderr says why); "
          "2 the command line is wrong (unknown option, bad value).")

TERMINAL_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
# sd-daemon(3) priorities: the syslog levels.
JOURNAL_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def version() -> str:
    """The installed distribution's version (the package's own when run from a checkout)."""
    try:
        return importlib.metadata.version("edgemon")
    except importlib.metadata.PackageNotFoundError:
        from edgemon import __version__

        return __version__


def version_option(program: str):
    """An eager ``--version`` option for a typer callback: prints ``PROGRAM VERSION`` and exits."""
    def show(value: bool) -> None:
        if value:
            typer.echo(f"{program} {version()}")
            raise typer.Exit()

    return typer.Option("--version", callback=show, is_eager=True, help="Print the version and exit.")


def writes_to_journal(stream: TextIO | None = None, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` (default stderr) is the journal: systemd sets ``$JOURNAL_STREAM`` to
    the ``device:inode`` of the stream it connected, which a redirected stderr no longer matches."""
    env = os.environ if env is None else env
    stream = sys.stderr if stream is None else stream
    wanted = env.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):   # no file behind it (a test runner's buffer)
        return False
    return wanted == f"{st.st_dev}:{st.st_ino}"


def journal_prefix(level: int) -> str:
    """``<N>`` for a logging level: the nearest syslog priority at or above it."""
    for threshold in sorted(JOURNAL_PRIORITY, reverse=True):
        if level >= threshold:
            return f"<{JOURNAL_PRIORITY[threshold]}>"
    return "<7>"


class JournalFormatter(logging.Formatter):
    """No timestamp (journald adds its own); every line, a traceback's too, carries the record's
    priority, so a multi-line error is not read as info from its second line on."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = journal_prefix(record.levelno)
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class TerminalFormatter(logging.Formatter):
    """Lines stamped in UTC, marked Z, as every time edgemon stores and exports (a newcomer trial:
    on a recorder set to local time, log lines and the detections' times could not be lined up)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(TERMINAL_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created)) + f",{int(record.msecs):03d}Z"


def setup_logging(level: int = logging.INFO, stream: TextIO | None = None,
                  env: Mapping[str, str] | None = None) -> None:
    """Log to ``stream`` (default stderr) at ``level``: journal lines under systemd, else stamped in UTC."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if writes_to_journal(stream, env) else TerminalFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    warnings.showwarning = _warning_as_log_line


# watchdog's inotify observer warns so, with its objects' reprs (about 1 KB), when a directory
# moved out of the watched tree comes back while watched: harmless, it watches it again.
_HARMLESS_WARNINGS = (re.compile(r"Callback with id .* already exists for watch", re.S),)
WARNING_MAX_CHARS = 300


def _warning_as_log_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (a library's) as one log line, stamped and prioritised as the others: it
    went to stderr raw, over two lines and without either (a newcomer trial)."""
    text = " ".join(str(message).split())
    if any(pattern.search(text) for pattern in _HARMLESS_WARNINGS):
        logging.getLogger("edgemon").debug("%s: %s", category.__name__, text[:WARNING_MAX_CHARS])
        return
    if len(text) > WARNING_MAX_CHARS:
        text = text[:WARNING_MAX_CHARS] + "…"
    logging.getLogger("edgemon").warning("%s from %s:%d: %s", category.__name__, Path(filename).name, lineno, text)


def error(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Print ``error: MESSAGE`` as one line on stderr (an error in the journal); the Exit to raise."""
    echo_error(message)
    return typer.Exit(code)


def echo_error(message: str) -> None:
    """``error: MESSAGE`` on stderr, at error priority when stderr is the journal; one line."""
    # shown: a name in the message (a recording's, a path given) may hold an escape sequence or
    # bytes that are not UTF-8; raw, they drove the terminal or printed as '\udce9'.
    line = "error: " + shown(" ".join(str(message).splitlines()))
    typer.echo((journal_prefix(logging.ERROR) if writes_to_journal() else "") + line, err=True)


def usage_errors_in_one_line(argv: list[str] | None = None) -> None:
    """Command-line mistakes (exit status 2) as one line naming the value given: click's own were
    four lines ("Usage: …", "Try …", a blank, the error), and "Invalid value for '--settle-s':
    Input should be a valid number" did not say that 'abc' was given (a newcomer trial)."""
    import importlib

    def show(self, file: TextIO | None = None) -> None:
        ctx = getattr(self, "ctx", None)
        command = ctx.command_path if ctx is not None else "edgemon"
        given = _given_value(getattr(self, "param", None), sys.argv if argv is None else argv)
        # Typer's choice check words its refusal as a validator's ("Value error, 'xml' is not one
        # of …"), and names the value itself (a newcomer trial): neither said twice
        message = self.format_message().rstrip(".").replace("Value error, ", "")
        if given and given[len(" (given "):-1] in message:
            given = ""
        print(f"error: {command}: {message}{given}; see `{command} -h`", file=sys.stderr)

    # Typer raises click's UsageError, or (from 0.24) that of the click it carries inside.
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            importlib.import_module(module).UsageError.show = show
        except (ImportError, AttributeError):
            continue


def plain_help_names() -> None:
    """Help that names what to type, not Python's types. Typer (0.29) wrote a list argument as
    ``{FILES}...`` on the usage line and ``FILES <list[Path]>`` in the list, and a repeatable option
    as ``<list[str]>`` (a docs review). Arguments now read as click writes them, ``FILE...`` (or
    ``[FILE]...`` when optional), in upper case; a list shows the type of one value. A Typer
    without these internals (before 0.24) is left as it is."""
    import typer.core as core

    parameter = getattr(core, "_TyperParameter", None)
    argument = getattr(core, "TyperArgument", None)
    if parameter is None or argument is None or not hasattr(argument, "_usage_display_name"):
        return
    display_type = parameter.display_type
    if getattr(display_type, "_edgemon_plain", False):
        return

    def one_value(self, ctx) -> str:
        # "<int range>": the range is in the brackets after the help ([x>=1]), a newcomer trial
        shown = re.sub(r"<(int|float) range>", r"<\1>", display_type(self, ctx))
        found = re.fullmatch(r"<list\[(.*)\]>", shown)
        if found is None:
            return shown
        return "<path>" if found[1] == "Path" else f"<{found[1]}>"

    def name(self) -> str:
        shown = self.metavar if self.metavar is not None else self.name.upper()
        return shown + "..." if self.nargs != 1 else shown

    def usage_name(self) -> str:
        shown = self.metavar if self.metavar is not None else self.name.upper()
        shown = shown if self.required else f"[{shown}]"
        return shown + "..." if self.nargs != 1 else shown

    one_value._edgemon_plain = True
    parameter.display_type = one_value
    argument._rich_display_name = name
    argument._usage_display_name = usage_name
    argument.get_error_hint = lambda self: f"'{name(self)}'"   # "Missing argument 'BUNDLE'", as the usage line


def _given_value(param, argv: list[str]) -> str:
    """" (given 'VALUE')" for an option whose value was refused, as the command line gave it."""
    for i, arg in enumerate(argv):
        for opt in getattr(param, "opts", ()) if getattr(param, "param_type_name", "") == "option" else ():
            if arg == opt and i + 1 < len(argv):
                return f" (given {argv[i + 1]!r})"
            if arg.startswith(opt + "="):
                return f" (given {arg.split('=', 1)[1]!r})"
    return ""
