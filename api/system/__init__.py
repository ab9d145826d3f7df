"""The system domain of the API."""
