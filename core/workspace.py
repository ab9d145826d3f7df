"""The files of one job's work directory: stage summaries, append-only JSONL records and checkpoints.

A finished stage run writes ``stages/<name>.json`` (its summary); ``core.pipeline.run_pipeline`` skips runs that
have one. What each stage writes is listed in ``core.stages.STAGES``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twofold.core.records import TeacherSample


class CorruptFileError(ValueError):
    """A workspace file has a line that is not JSON somewhere other than a torn last line."""


class Workspace:
    """The files of one job under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """A path inside the workspace."""
        return self.root / name

    def done(self, name: str) -> dict[str, Any] | None:
        """The summary of the stage run ``name`` if it has finished, else None."""
        p = self.root / "stages" / f"{name}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def mark_done(self, name: str, summary: dict[str, Any]) -> None:
        """Record the stage run ``name`` as finished (atomic write)."""
        write_json(self.root / "stages" / f"{name}.json", summary)

    def append_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to a JSONL file and flush them to disk. A torn last line left by a crash is completed
        (when it parses) or cut off first, so the new rows never fuse with it into a corrupt line."""
        path = self.root / name
        _mend_tail(path)
        with path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """Rows of a JSONL file ([] when it does not exist); blank lines are skipped.

        A last line without its newline that does not parse was torn by a crash mid-write and is skipped.
        Raises :class:`CorruptFileError` naming the file and line for any other line that does not parse.
        """
        p = self.root / name
        if not p.exists():
            return []
        text = p.read_text(encoding="utf-8")
        lines = text.split("\n")  # the last element is "" when the file ends with a newline
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines):  # no newline after it: torn
                    break
                raise CorruptFileError(
                    f"{p} line {number}: not valid JSON ({exc.msg}); only a torn last line is skipped, so "
                    "this file was damaged: delete it and rerun the stage that writes it"
                ) from None
        return rows

    def teacher_samples(self) -> list[TeacherSample]:
        """Teacher samples recorded so far (deduplicated by key)."""
        seen: dict[tuple[str, float, int], TeacherSample] = {}
        for row in self.read_jsonl("teacher_samples.jsonl"):
            s = TeacherSample(**row)
            seen.setdefault(s.key, s)
        return list(seen.values())


def _mend_tail(path: Path) -> None:
    """End ``path`` with a newline: a torn last line is kept (newline added) if it parses, else cut off."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except ValueError:  # JSONDecodeError or UnicodeDecodeError: a torn write
            fh.truncate(start)
        else:
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (tmp file then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
