"""The presets domain of the API."""
