"""Pieces every resource module uses: base classes and argument helpers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Union

from .._base_client import AsyncAPIClient, SyncAPIClient
from .._exceptions import TwofoldError

#: What ``datasets.create(file=...)`` accepts: a path, raw bytes, a binary file object, or (filename, bytes).
FileInput = Union[str, "os.PathLike[str]", bytes, IO[bytes], tuple[str, bytes]]


class SyncAPIResource:
    """A group of endpoints bound to a :class:`~twofold_client.Client`."""

    def __init__(self, client: SyncAPIClient) -> None:
        self._client = client


class AsyncAPIResource:
    """A group of endpoints bound to an :class:`~twofold_client.AsyncClient`."""

    def __init__(self, client: AsyncAPIClient) -> None:
        self._client = client


def list_params(*, limit: int | None, after: str | None, **filters: Any) -> dict[str, Any]:
    """Query parameters of a list call; None values are dropped when the request is built."""
    if limit is not None and not 1 <= limit <= 100:
        raise TwofoldError(f"limit must be between 1 and 100, got {limit}")
    return {"limit": limit, "after": after, **filters}


def read_file_input(file: FileInput) -> tuple[str, bytes]:
    """(filename, content) of an upload. Read whole, so that a retried upload sends the same bytes."""
    if isinstance(file, tuple):
        return file[0], file[1]
    if isinstance(file, bytes):
        return "dataset.jsonl", file
    if isinstance(file, (str, os.PathLike)):
        path = Path(file)
        if not path.is_file():
            raise TwofoldError(f"file: {path} does not exist or is not a file")
        return path.name, path.read_bytes()
    content = file.read()
    if not isinstance(content, bytes):
        raise TwofoldError("file: open the file in binary mode ('rb')")
    return Path(str(getattr(file, "name", "dataset.jsonl"))).name, content


def metadata_params(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """``{"team": "a"}`` -> ``{"metadata[team]": "a"}`` (the jobs list filter syntax)."""
    return {f"metadata[{key}]": value for key, value in (metadata or {}).items()}
