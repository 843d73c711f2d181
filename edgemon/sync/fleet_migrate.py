"""``edgemon fleet migrate``: the fleet schema and views brought to this edgemon's by their owner,
where recorders only write rows and so cannot migrate them (deploy/fleet-setup.sql)."""

from __future__ import annotations

from edgemon.sync import fleetdb
from edgemon.sync.fleetschema import SCHEMA, SCHEMA_VERSION
from edgemon.sync.fleetviews import VIEW_REVISIONS


class NotSchemaOwnerError(fleetdb.FleetDbError):
    """``fleet migrate`` run by a role other than the owner of the existing schema edgemon."""


def migrate_fleet(url: str) -> str:
    """Migrate the fleet database at ``url``; what it was and is now, as a line. A role that may
    not migrate the schema or revise the views is an error, not a warning: migrating is asked."""
    where = fleetdb.target_name(fleetdb.check_url(url))
    try:
        with fleetdb.connect(url) as conn:
            # Only the schema's owner: what another role makes there (PostgreSQL's superuser may
            # make anything) is that role's, outside the owner's default privileges, so recorders
            # and analysts were refused every table ("permission denied for table
            # schema_version") after a migrate that said it had succeeded (a review).
            owner, user = conn.execute("SELECT (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s), "
                                       "current_user", [SCHEMA]).fetchone()
            if owner is not None and owner != user:
                raise NotSchemaOwnerError(f"{where}: schema {SCHEMA} is owned by {owner}: run this as {owner}, not "
                                          f"{user} (what {user} made there, recorders could not write)")
            views_before = fleetdb.view_revision(conn)   # 0 where there is no schema yet
            schema_before = fleetdb.migrate(conn)
            views_now = fleetdb.view_revision(conn)
            _bookkeeping_read_only(conn)
    except fleetdb.DRIVER_ERRORS as e:
        raise fleetdb.classify(e, where) from None
    if views_now < len(VIEW_REVISIONS):
        raise fleetdb.SchemaBehindError(
            f"{where}: the fleet views stay at revision {views_now} (this edgemon's: {len(VIEW_REVISIONS)}): role "
            f"{user} may not replace them; run this as the owner of schema {SCHEMA}")
    said = lambda before, now: f"{before} (as it was)" if before == now else f"{before} -> {now}"
    return (f"{where}: fleet schema version {said(schema_before, SCHEMA_VERSION)}, views revision "
            f"{said(views_before, views_now)}")


BOOKKEEPING = ("schema_version", "view_revision")   # the schema's own tables: no recorder's rows


def _bookkeeping_read_only(conn) -> None:
    """Writes on the schema's version tables taken back from every role but their owner:
    deploy/fleet-setup.sql gives recorders every table fleet_admin makes, and one unit's
    credentials wrote version 99, after which every recorder, ``fleet status`` and this command
    refused the fleet ("newer than this edgemon: upgrade", a review). Reading stays."""
    tables = ", ".join(f"to_regclass('{SCHEMA}.{t}')" for t in BOOKKEEPING)
    revokes = conn.execute(f"""
        SELECT DISTINCT format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %s FROM %s', c.oid::regclass,
                               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid IN ({tables}) AND a.grantee <> c.relowner
          AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')""").fetchall()
    for (revoke,) in revokes:
        conn.execute(revoke)
