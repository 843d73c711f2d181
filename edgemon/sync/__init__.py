"""The fleet: the database as an outbox, the sender to PostgreSQL, the fleet schema and database,
and ``edgemon fleet status``."""
