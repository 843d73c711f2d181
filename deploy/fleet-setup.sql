-- The fleet database, set up once by PostgreSQL's superuser (psql -U postgres -f fleet-setup.sql):
-- recorders sync as `recorder`, which owns the schema edgemon creates and migrates; people read
-- the views as `analyst`, which can read everything and change nothing. Give each role a
-- password (ALTER ROLE ... PASSWORD) or another authentication method in pg_hba.conf.
CREATE ROLE recorder LOGIN;
CREATE ROLE analyst LOGIN;
CREATE DATABASE fleet OWNER recorder;
\connect fleet
CREATE SCHEMA edgemon AUTHORIZATION recorder;
GRANT USAGE ON SCHEMA edgemon TO analyst;
ALTER DEFAULT PRIVILEGES FOR ROLE recorder IN SCHEMA edgemon GRANT SELECT ON TABLES TO analyst;
