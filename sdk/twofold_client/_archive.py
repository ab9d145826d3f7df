"""Safe extraction of checkpoint tarballs: nothing may land outside the target directory."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from ._exceptions import UnsafeArchiveError


def safe_extract(archive: Path, out_dir: Path) -> list[str]:
    """Extract a ``.tar.gz`` into ``out_dir`` after checking every member; return the member names.

    Refuses (``UnsafeArchiveError``, before writing anything) absolute paths, ``..`` components, links and
    device files: a Hugging Face checkpoint directory holds only regular files and directories.
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
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's own guard as a second line
            tar.extractall(root, members=members, filter="data")
        else:  # pragma: no cover - older 3.11 patch releases; the checks above already ran
            tar.extractall(root, members=members)  # noqa: S202
    return [m.name for m in members]
