"""A fleet database to try edgemon's fleet commands on one machine: a throwaway PostgreSQL server set
up by ``deploy/fleet-setup.sql``, the URL of each of its roles printed; Ctrl-C (or SIGTERM) stops and
removes it. A newcomer trial found no way to try the fleet short of a server of one's own.

    .venv/bin/python -m devtools.try_fleet      # a dev install (scripts/setup-dev.sh) has the server
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from devtools.postgres_server import postgres_server

SETUP = Path(__file__).resolve().parents[1] / "deploy" / "fleet-setup.sql"
ROLES = ("fleet_admin", "recorder", "analyst")


def setup_statements(text: str) -> tuple[list[str], list[str]]:
    """The file's statements run on the server, and those run in database ``fleet`` (after its
    ``\\connect fleet``), without comments."""
    plain = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    on_server, in_fleet = plain.split("\\connect fleet")
    return ([s.strip() for s in on_server.split(";") if s.strip()],
            [s.strip() for s in in_fleet.split(";") if s.strip()])


def role_url(server_url: str, role: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}", path="/fleet"))


def _stop(signum, frame):
    raise SystemExit(0)   # through the server's clean-up


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    try:
        with postgres_server() as sqlalchemy_url:
            url = sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")
            on_server, in_fleet = setup_statements(SETUP.read_text())
            with psycopg.connect(url, autocommit=True) as conn:
                for statement in on_server:
                    conn.execute(statement)
            with psycopg.connect(role_url(url, "postgres"), autocommit=True) as conn:
                for statement in in_fleet:
                    conn.execute(statement)
            print(f"a throwaway fleet database, set up by {SETUP.name} (no passwords: trust on 127.0.0.1):")
            for role in ROLES:
                print(f"  {role:12s} {role_url(url, role)}")
            print(f"try: edgemon fleet migrate --db {role_url(url, 'fleet_admin')}\n"
                  f"     edgemon sync --db detections.db --to {role_url(url, 'recorder')}\n"
                  f"     edgemon fleet status --db {role_url(url, 'analyst')}\n"
                  "Ctrl-C stops and removes it.", flush=True)
            signal.pause()
    except KeyboardInterrupt:
        pass
    except FileNotFoundError as exc:   # no server binaries: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
