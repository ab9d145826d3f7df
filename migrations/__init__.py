"""Alembic migrations: the only way the schema changes (``twofold db upgrade``)."""
