"""Persistence: settings, SQLAlchemy models and sessions, job/stage operations and the artifact store."""
