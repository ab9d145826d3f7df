"""Safe extraction of checkpoint tarballs: nothing may land outside the target directory."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from ._exceptions import UnsafeArchiveError


def _single_top_dir(members: list[tarfile.TarInfo]) -> str | None:
    """The one directory every member lies under (the server wraps a checkpoint as ``<name>/...``), or None."""
    tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
    if len(tops) != 1:
        return None
    top = tops.pop()
    nested = any(len(PurePosixPath(m.name).parts) > 1 for m in members)
    return top if nested and all(m.isdir() for m in members if m.name.rstrip("/") == top) else None


def safe_extract(archive: Path, out_dir: Path) -> list[str]:
    """Extract a ``.tar.gz`` into ``out_dir`` after checking every member; return the extracted names.

    When every member lies under one top-level directory, that directory's contents land directly in
    ``out_dir`` (so ``out_dir`` is the model directory). Refuses, with ``UnsafeArchiveError`` and before
    writing anything, absolute paths, ``..`` components, links and device files: a Hugging Face checkpoint
    directory holds only regular files and directories.
    """
    root = out_dir.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            parts = PurePosixPath(member.name).parts
            target = (root / member.name).resolve()
            if member.name.startswith(("/", "\\")) or ".." in parts or not target.is_relative_to(root):
                raise UnsafeArchiveError(f"refusing to extract {member.name!r}: it would land outside {root}")
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(
                    f"refusing to extract {member.name!r}: not a regular file or directory"
                )
        top = _single_top_dir(members)
        if top is not None:
            members = [m for m in members if m.name.rstrip("/") != top]
            for member in members:
                member.name = str(PurePosixPath(*PurePosixPath(member.name).parts[1:]))
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's own guard as a second line
            tar.extractall(root, members=members, filter="data")
        else:  # pragma: no cover - older 3.11 patch releases; the checks above already ran
            tar.extractall(root, members=members)  # noqa: S202
    return [m.name for m in members]
