"""Reaching the fleet's PostgreSQL database: its errors, one per thing a user does about them; the
sync URL checked (never echoing it: a password or a key's passphrase in it is refused, so none
reaches a command line, a settings file or a log; credentials come from libpq's passfile, a client
certificate or ``$PGPASSWORD``); the connection; a driver error as one of the errors."""

from __future__ import annotations

import os
import re
import stat
import urllib.parse

from edgemon.errors import EdgemonError

try:  # the `sync` extra: recorders that never sync do not carry a PostgreSQL driver
    import psycopg
    from psycopg import conninfo
except ImportError:  # pragma: no cover - exercised only on an edge install without the extra
    psycopg = conninfo = None

# What a driver call may raise (nothing, without the driver: ``except ()`` catches nothing).
DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error,) if psycopg else ()


class FleetDbError(EdgemonError):
    """The fleet database cannot be reached or used."""


class SyncUrlError(FleetDbError):
    """A sync URL is malformed or holds a secret."""


class AuthError(FleetDbError):
    """The fleet database refused the credentials (retrying will not help)."""


class UnreachableError(FleetDbError):
    """The fleet database cannot be reached now (network, server down): worth retrying later."""


class SchemaNewerError(FleetDbError):
    """The fleet database's schema is newer than this edgemon knows."""


class SchemaBehindError(FleetDbError):
    """The fleet database's schema is older than this edgemon's, and this role may not migrate it."""


class BusyError(FleetDbError):
    """Another sync of the same recorder database is running."""


class LineageMovedError(FleetDbError):
    """The server's acknowledgement of a database moved during a session (another sender under
    the same UUID): the batch was not applied."""


PASSWORD_IN_URL = ("the fleet database URL holds a password: put it in a 0600 passfile (~/.pgpass, $PGPASSFILE "
                   "or ?passfile=PATH) or $PGPASSWORD, never in the URL")
# libpq's other secret: the passphrase of the client key (sslpassword). In the URL it reached the
# settings file, `edgemon config`'s output and the journal (the service logs its settings).
SSLPASSWORD_IN_URL = ("the fleet database URL holds the client key's passphrase (sslpassword): give the service "
                      "a key without one (0600, owned by its user), never the passphrase in the URL")


def _secret_in(url: str) -> str | None:
    """The refusal of a postgresql:// URL that carries a password (user:pw@ or ?password=) or a
    key's passphrase (?sslpassword=), read without libpq: what ``conninfo_to_dict`` finds there;
    None when it carries neither."""
    parts = urllib.parse.urlsplit(url)
    try:
        in_netloc = bool(parts.password)
    except ValueError:
        in_netloc = False
    query = {key for key, value in urllib.parse.parse_qsl(parts.query) if value}
    if in_netloc or "password" in query:
        return PASSWORD_IN_URL
    return SSLPASSWORD_IN_URL if "sslpassword" in query else None


def check_url(url: str, *, passfile: bool = True) -> dict[str, str]:
    """The libpq parameters of ``url``; SyncUrlError (never echoing the URL) when it holds a
    password, is not a PostgreSQL URL, or names a passfile anyone but its owner may read.
    ``passfile=False`` skips the checks of the passfile being there and readable by this user:
    the service checks those per session, so a passfile mended later needs no restart and a
    missing one never stops the recording."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise SyncUrlError("a fleet database is given as a postgresql:// URL")
    if psycopg is None:   # the URL's own faults first: `edgemon config` on a recorder-only install names them
        if refusal := _secret_in(url):
            raise SyncUrlError(refusal)
        raise FleetDbError("the fleet commands (sync, fleet migrate, fleet status) need the PostgreSQL driver, the "
                           "'sync' extra (in a clone: .venv/bin/pip install -c constraints.txt -e '.[sync]'; else "
                           "pip install 'edgemon[sync]')")
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise SyncUrlError("sync URL is not a valid PostgreSQL URL") from None
    if params.get("password"):
        raise SyncUrlError(PASSWORD_IN_URL)
    if params.get("sslpassword"):
        raise SyncUrlError(SSLPASSWORD_IN_URL)
    _check_values(params)
    named = params.get("passfile") or os.environ.get("PGPASSFILE")
    if named:  # named, so meant: libpq would silently skip it and report "no password supplied"
        try:
            found = os.stat(named)
        except FileNotFoundError:
            found = None
        except OSError as e:   # a directory on the way this user may not search
            if not passfile:
                return params
            raise SyncUrlError(f"passfile {named} cannot be reached by this user ({e.strerror})") from None
        if found is not None and found.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SyncUrlError(f"passfile {named} is readable by others: chmod 0600 it")
        if passfile and found is None:
            raise SyncUrlError(f"passfile {named} not found")
        if passfile and not os.access(named, os.R_OK):
            raise SyncUrlError(f"passfile {named} cannot be read by this user: chown it to the user "
                               f"edgemon runs as (edgemon for the service) and keep it 0600")
    return params


SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
WHOLE_NUMBER_OPTIONS = ("connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count")


def _check_values(params: dict[str, str]) -> None:
    """libpq parses a URL's option names, not its values: a port '5543a' or an sslmode 'bogus'
    failed at every connection, was called "unreachable" and retried for ever (a review). The
    values it takes as numbers or from a list, checked here (none of them is a secret)."""
    for port in (params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise SyncUrlError(f"sync URL: port {port!r} is not a port number (1-65535)")
    if params.get("sslmode") not in (None, *SSL_MODES):
        raise SyncUrlError(f"sync URL: sslmode {params['sslmode']!r} is not one of {', '.join(SSL_MODES)}")
    for option in WHOLE_NUMBER_OPTIONS:
        value = params.get(option)
        if value is not None and not re.fullmatch(r"-?[0-9]{1,9}", value.strip()):
            raise SyncUrlError(f"sync URL: {option} {value!r} is not a whole number")


def target_name(params: dict[str, str]) -> str:
    """A recorder-side name for a target, without credentials: 'user@host:port/dbname'."""
    return (f"{params.get('user', '')}@{params.get('host', 'localhost')}:{params.get('port', '5432')}"
            f"/{params.get('dbname', '')}")


def connect(url: str, *, connect_timeout_s: int = 15) -> psycopg.Connection:
    """An autocommit connection to the fleet database at ``url`` (checked by ``check_url``).

    TCP keepalives find a link that died silently, so a sync never hangs for ever.
    """
    params = check_url(url)
    params = {"connect_timeout": str(connect_timeout_s), "keepalives_idle": "30",
              "keepalives_interval": "10", "keepalives_count": "3", "application_name": "edgemon-sync",
              **params}
    try:
        return psycopg.connect(conninfo.make_conninfo(**params), autocommit=True)
    except psycopg.OperationalError as e:
        raise classify(e, target_name(params)) from None


def classify(exc: psycopg.Error, where: str) -> FleetDbError:
    """A driver error as one named, one-line error (libpq's first line; it never holds a password)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    first = first.removeprefix("connection failed: ")
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if (sqlstate in ("28P01", "28000") or "password authentication failed" in first or "no password supplied" in first
            or re.search(r'role ".*" does not exist', first)):   # reached, and refused: not "unreachable"
        return AuthError(f"fleet database {where} refused the credentials: {first}")
    if "for connection option" in first or re.search(r"invalid \w+ value", first):
        # An option's value libpq refuses before connecting: no retry mends it (a review).
        return SyncUrlError(f"fleet database {where}: the sync URL's {first}")
    if sqlstate == "3D000" or re.search(r'database ".*" does not exist', first):
        # Not worth retrying: a name mistyped in the URL does not come to exist by waiting.
        return FleetDbError(f"fleet database {where}: {first} (check the database name in the URL)")
    if isinstance(exc, psycopg.OperationalError) or sqlstate.startswith(("08", "57P")):
        return UnreachableError(f"fleet database {where} unreachable: {first}")
    return FleetDbError(f"fleet database {where}: {first}")
