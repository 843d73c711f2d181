-- The fleet database, set up once by PostgreSQL's superuser (psql -U postgres -f fleet-setup.sql),
-- then its schema created by `edgemon fleet migrate --db postgresql://fleet_admin@HOST/fleet`:
-- `fleet_admin` (the study's administrator) owns the schema edgemon and migrates it, once now and
-- after each upgrade of edgemon; recorders sync as `recorder`, which may read and write the rows
-- and nothing else (no table, view or function of its own: the credentials on a unit in the
-- forest cannot change what the others read); people read the views as `analyst`, which can read
-- everything and change nothing. Give each role a password (ALTER ROLE ... PASSWORD) or another
-- authentication method in pg_hba.conf.
CREATE ROLE fleet_admin LOGIN;
CREATE ROLE recorder LOGIN;
CREATE ROLE analyst LOGIN;
-- Owned by the superuser, not by a recorder: a database's owner may ALTER DATABASE (a search_path
-- for every session, the superuser's too) and, from PostgreSQL 15, owns its schema public, where a
-- function put before pg_catalog's would run with the rights of whoever calls it.
CREATE DATABASE fleet;
\connect fleet
CREATE SCHEMA edgemon AUTHORIZATION fleet_admin;
-- PostgreSQL 14 and older let every role create objects in schema public (15 no longer does).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA edgemon TO recorder, analyst;
-- What fleet_admin creates there (now and at each migration): rows for recorders, reading for analysts.
ALTER DEFAULT PRIVILEGES FOR ROLE fleet_admin IN SCHEMA edgemon GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO recorder;
ALTER DEFAULT PRIVILEGES FOR ROLE fleet_admin IN SCHEMA edgemon GRANT USAGE, SELECT ON SEQUENCES TO recorder;
ALTER DEFAULT PRIVILEGES FOR ROLE fleet_admin IN SCHEMA edgemon GRANT SELECT ON TABLES TO analyst;
-- One login per recorder, so that a unit lost or stolen is shut out alone (ALTER ROLE site07
-- NOLOGIN) while the others keep their passwords: each logs in as itself and acts as `recorder`.
--   CREATE ROLE site07 LOGIN IN ROLE recorder;
--   ALTER ROLE site07 SET role TO recorder;
