"""The events domain of the API."""
