"""Alembic migrations of the lab history database (revisions are hand-written, in versions/)."""
