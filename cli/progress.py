"""Callbacks for in-process runs: a progress bar per stage on the terminal, JSONL logs in the run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class FileCallbacks:
    """Implements ``core.records.PipelineCallbacks`` for the CLI: progress bars (stderr) and
    ``metrics.jsonl`` / ``events.jsonl`` in ``root``. The pipeline itself writes samples, labels and checkpoints.
    Use as a context manager so the bars are closed."""

    def __init__(self, root: Path, *, quiet: bool = False) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.console = Console(stderr=True)
        self.quiet = quiet
        self._progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            disable=quiet,
        )
        self._tasks: dict[str, Any] = {}
        self._last: dict[str, dict[str, float]] = {}

    def __enter__(self) -> FileCallbacks:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _append(self, name: str, row: dict[str, Any]) -> None:
        with (self.root / name).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, default=str) + "\n")

    def progress(self, stage: str, done: int, total: int) -> None:
        """Advance the stage's bar."""
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(stage, total=max(total, 1))
        self._progress.update(self._tasks[stage], completed=done, total=max(total, 1))

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Append to metrics.jsonl and show the latest values beside the bar."""
        self._append("metrics.jsonl", {"t": time.time(), "stage": stage, "step": step, **values})
        self._last[stage] = values
        if stage in self._tasks:
            shown = " ".join(
                f"{k}={v:.3g}" for k, v in list(values.items())[:3] if isinstance(v, int | float)
            )
            self._progress.update(self._tasks[stage], description=f"{stage} {shown}"[:60])

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Append to events.jsonl; warnings and errors are also printed."""
        self._append(
            "events.jsonl",
            {
                "t": time.time(),
                "stage": stage,
                "level": level,
                "type": type,
                "message": message,
                "data": data or {},
            },
        )
        if level in ("warning", "error") and not self.quiet:
            self._progress.console.print(f"[{level}] {stage}: {message}")

    def should_stop(self) -> bool:
        """In-process runs stop with Ctrl-C instead."""
        return False

    def teacher_samples(self, samples: list[Any]) -> None:
        """The pipeline already appends them to teacher_samples.jsonl."""

    def student_samples(self, samples: list[Any]) -> None:
        """The pipeline already writes student_samples.jsonl."""

    def labels(self, labels: list[Any], stats: dict[str, Any]) -> None:
        """Print the label summary."""
        if not self.quiet:
            self._progress.console.print(
                f"labels: {stats['labels']} on {stats['questions_kept']}/{stats['questions_total']} questions, "
                f"{stats['positive_rate'] * 100:.0f}% positive"
            )

    def checkpoint(self, stage: str, kind: str, step: int, path: Path) -> None:
        """Note where the checkpoint went."""
        self.event(
            stage, "info", "checkpoint", f"{kind} checkpoint at step {step}: {path}", {"path": str(path)}
        )

    def evaluation(self, result: Any) -> None:
        """Print the score."""
        if not self.quiet:
            lo, hi = result.ci95
            self._progress.console.print(
                f"eval {result.model}: {result.accuracy * 100:.1f}% [{lo * 100:.1f}, {hi * 100:.1f}] (n={result.n})"
            )
