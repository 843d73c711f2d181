"""Moved to devtools/postgres_server.py (bench/ uses it too). Kept only for tests/test_hpo.py's
import, which the lead changes at merge; then this file goes."""

from devtools.postgres_server import postgres_server  # noqa: F401
