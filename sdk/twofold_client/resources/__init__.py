"""Resource groups of the client (``client.datasets``, ``client.jobs``, ``client.presets``)."""

from .datasets import AsyncDatasets, Datasets
from .jobs import AsyncJobs, Jobs
from .presets import AsyncPresets, Presets

__all__ = ["Datasets", "AsyncDatasets", "Jobs", "AsyncJobs", "Presets", "AsyncPresets"]
