"""Build `.typing/twofold/<folder>` symlinks to the repository's top-level packages, so that mypy, which cannot
follow setuptools' editable package-dir mapping, sees them under the names they install as (twofold.core, ...)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from setup import ROOTS  # noqa: E402  (the one list of top-level packages)


def main() -> None:
    view = REPO / ".typing" / "twofold"
    view.mkdir(parents=True, exist_ok=True)
    for root in ROOTS:
        link = view / root
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(Path("..", "..", root), link)


if __name__ == "__main__":
    main()
