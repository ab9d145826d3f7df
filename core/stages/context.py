"""What a stage's ``run(ctx)`` is given: the job's questions (:func:`load_data`) and a :class:`StageContext`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twofold.core.configs import DataConfig, JobSpec
from twofold.core.records import Cancelled, Label, PipelineCallbacks, TeacherSample
from twofold.core.tasks import Item, Task, get_task
from twofold.core.workspace import Workspace


@dataclass
class TaskData:
    """The questions of a job: ``train`` for distillation, ``test`` held out for evaluation."""

    task: str
    train: list[Item]
    test: list[Item]


def load_data(cfg: DataConfig) -> TaskData:
    """Load the train and test items for ``cfg`` (``train_size``/``test_size``: 0 = the task's default or all)."""
    task = get_task(cfg.task)
    train = task.load("train", path=cfg.path, size=cfg.train_size, seed=cfg.seed)
    test = task.load("test", path=cfg.path, size=cfg.test_size, seed=cfg.seed)
    if not train:
        raise ValueError(f"data: task {cfg.task!r} gave no training questions")
    return TaskData(cfg.task, train, test)


@dataclass
class StageContext:
    """Everything a stage run needs.

    ``name`` is the name it runs under (a variant's own name; it labels the run's progress, metrics, events,
    checkpoint, output directory and summary) and ``stage`` the stage it runs. ``spec`` has the variant's
    overrides applied. ``given_teacher_samples``: the teacher samples the service already holds (its database
    is their record); None reads ``teacher_samples.jsonl`` in the workspace.
    """

    name: str
    stage: str
    spec: JobSpec
    data: TaskData
    workspace: Workspace
    callbacks: PipelineCallbacks
    given_teacher_samples: Sequence[TeacherSample] | None = None

    @property
    def task(self) -> Task:
        """The job's task (prompts, answer extraction, scoring)."""
        return get_task(self.data.task)

    @property
    def device(self) -> str:
        """Where models go (``spec.device`` resolved)."""
        from twofold.core.models import pick_device

        return str(pick_device(self.spec.device))

    def teacher_samples(self) -> list[TeacherSample]:
        """The teacher samples recorded so far."""
        if self.given_teacher_samples is not None:
            return list(self.given_teacher_samples)
        return self.workspace.teacher_samples()

    def labels(self) -> list[Label]:
        """The pseudo-labels the labeling stage wrote."""
        return [Label(**row) for row in self.workspace.read_jsonl("labels.jsonl")]

    def load_policy(self, name: str) -> tuple[Any, Any]:
        """The causal LM and tokenizer of the workspace checkpoint ``name`` (e.g. ``sft``)."""
        from twofold.core.models import load_causal_lm

        path = self.workspace.path(name)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{name}: no checkpoint in {path}; run the stage that writes it first")
        return load_causal_lm(path, device=self.device)

    def progress(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` units of this run."""
        self.callbacks.progress(self.name, done, total)

    def event(self, level: str, type_: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Report an event of this run."""
        self.callbacks.event(self.name, level, type_, message, data)

    def stop_if_cancelled(self) -> None:
        """Raise :class:`core.records.Cancelled` once the callbacks ask the run to stop."""
        if self.callbacks.should_stop():
            raise Cancelled(self.name)
