"""Plain records that stages produce and hand to callbacks, so the service can persist every output."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class TeacherSample:
    """One teacher response. ``(question_id, temperature, index)`` is its unique key within a job."""

    question_id: str
    temperature: float
    index: int
    text: str
    answer: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    @property
    def key(self) -> tuple[str, float, int]:
        """The unique key of this sample within a job."""
        return (self.question_id, round(self.temperature, 4), self.index)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return asdict(self)


@dataclass(frozen=True)
class StudentSample:
    """One student response drawn for labelling."""

    question_id: str
    index: int
    text: str
    answer: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return asdict(self)


@dataclass(frozen=True)
class Label:
    """A pseudo-label: does this response's answer agree with the teacher's majority answer?"""

    question_id: str
    source: str  # "teacher" | "student"
    index: int  # teacher: position in the question's sample list; student: sample index
    text: str
    answer: str | None
    majority: str
    label: int  # 1 agree, 0 disagree
    agreement: float  # vote share of the majority among parseable teacher answers
    temperature: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return asdict(self)


@dataclass
class EvalResult:
    """Greedy accuracy of one model on one benchmark, with a 95% Wilson interval and per-item rows."""

    model: str  # "teacher" | "sft" | "rl" | ...
    benchmark: str
    accuracy: float
    ci95: tuple[float, float]
    n: int
    extraction_version: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Everything but the per-item rows."""
        d = asdict(self)
        d.pop("items")
        return d


class Callbacks(Protocol):
    """What a stage reports as it runs. The in-process runner writes files; the service writes rows."""

    def progress(self, stage: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``stage`` are complete."""

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Training-curve points (loss, reward, KL, ...) at ``step``."""

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """A notable happening (retry, warning, dropped questions, ...)."""

    def should_stop(self) -> bool:
        """True when the job was cancelled; a stage checks it between steps and raises ``Cancelled``."""


class PipelineCallbacks(Callbacks, Protocol):
    """Callbacks plus the persistence hooks the service implements (each called before the data is used)."""

    def teacher_samples(self, samples: list[TeacherSample]) -> None:
        """New teacher responses, as they arrive."""

    def student_samples(self, samples: list[StudentSample]) -> None:
        """New student responses drawn for labelling."""

    def labels(self, labels: list[Label], stats: dict[str, Any]) -> None:
        """All pseudo-labels of the job and their summary statistics."""

    def checkpoint(self, stage: str, kind: str, step: int, path: Path) -> None:
        """A complete HF checkpoint directory was written (``kind``: policy | reward_model)."""

    def evaluation(self, result: EvalResult) -> None:
        """A model was scored on a benchmark."""


class Cancelled(Exception):
    """Raised inside a stage when ``Callbacks.should_stop()`` turns true."""


class NullCallbacks:
    """Callbacks that do nothing (tests, library use)."""

    def progress(self, stage: str, done: int, total: int) -> None:
        """Ignore progress."""

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Ignore metrics."""

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Ignore events."""

    def should_stop(self) -> bool:
        """Never stop."""
        return False
