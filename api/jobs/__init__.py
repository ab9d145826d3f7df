"""The jobs domain of the API."""
