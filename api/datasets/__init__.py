"""The datasets domain of the API."""
