"""Celery workers and the in-process runner: where ``core`` (the method) meets ``store`` (the rows)."""
