"""Alembic environment: run by service.storage.database with a live connection (no alembic.ini)."""

from __future__ import annotations

from alembic import context

from service.storage.tables import metadata

connection = context.config.attributes["connection"]
# render_as_batch: SQLite cannot ALTER most things, later migrations copy the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
