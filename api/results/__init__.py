"""The results domain of the API."""
