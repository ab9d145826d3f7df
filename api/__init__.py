"""The REST API (FastAPI). Never imports torch or the workers; see ``api.main.create_app``."""
