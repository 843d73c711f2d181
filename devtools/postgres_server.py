"""A throwaway PostgreSQL server for tests and benches: initdb in a temp dir, start on a free port, stop."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator


def server_bin(name: str) -> str | None:
    """The newest installed PostgreSQL server binary ``name`` (initdb, pg_ctl, ...), or None."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh database; the server is removed afterwards.

    Runs as the ``postgres`` user when we are root (PostgreSQL refuses to run as root).
    """
    initdb, pg_ctl = server_bin("initdb"), server_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise FileNotFoundError("PostgreSQL server binaries (Debian package 'postgresql') are not installed")
    root = tempfile.mkdtemp(prefix="edgemon-pg-", dir="/tmp")
    data = os.path.join(root, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        os.chmod(root, 0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    run = lambda *cmd: subprocess.run(as_user + list(cmd), check=True, capture_output=True, text=True)
    try:
        run(initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        run(pg_ctl, "-D", data, "-w", "-l", os.path.join(root, "log"),
            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        run(server_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "edgemon")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/edgemon"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
