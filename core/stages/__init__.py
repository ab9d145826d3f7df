"""The one table of stages, and named variants of them. Torch-free: the API and the store import it.

Everything else derives from :data:`STAGES`: the store creates one stage-run row per entry (in this order, with
the job-spec sections it ``reads`` as the row's config), the API computes a job's progress over those rows, the
workers build one Celery task per entry (``twofold.stage.<name>`` on ``queue``), and ``core.pipeline`` runs the
entry's module, ``core/stages/<name>.py``, whose ``run(ctx)`` does the work. To add a stage, add an entry here
and write that module; to remove one, delete its entry.

A :class:`Variant` is a stage run under its own name with job-spec overrides, e.g. the demo's gold-reward
control ``Variant("rl_gold", "rl", {"rl": {"reward": "gold"}})``: its metrics, events, progress, checkpoint,
output directory and summary carry ``rl_gold``.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twofold.core.configs import RUN_NAME, ConfigError, JobSpec


class Queue(enum.StrEnum):
    """Where the service runs a stage: ``io`` (teacher calls), ``gpu`` (training), ``default`` (bookkeeping,
    such as the sweeper). Each is a Celery queue; a worker listens on some of them."""

    gpu = "gpu"
    io = "io"
    default = "default"


@dataclass(frozen=True)
class Stage:
    """One stage of a job.

    ``reads``: the job-spec sections that configure it (stored, resolved, on its stage-run row). ``outputs``:
    what it leaves in the job's work directory; ``{name}`` is the name it runs under (a variant's own name).
    """

    name: str
    queue: Queue
    reads: tuple[str, ...]
    outputs: tuple[str, ...]
    help: str

    def outputs_of(self, name: str) -> tuple[str, ...]:
        """The outputs of this stage run under ``name``."""
        return tuple(o.format(name=name) for o in self.outputs)


STAGES: tuple[Stage, ...] = (
    Stage(
        "teacher_sampling",
        Queue.io,
        reads=("teacher", "data"),
        outputs=("teacher_samples.jsonl",),
        help="sample the teacher for every training question, persisting each response before it is used",
    ),
    Stage(
        "sft",
        Queue.gpu,
        reads=("sft",),
        outputs=("{name}/",),
        help="fine-tune the student on the teacher answers that agree with their question's majority",
    ),
    Stage(
        "labeling",
        Queue.gpu,
        reads=("labels",),
        outputs=("student_samples.jsonl", "labels.jsonl", "label_stats.json"),
        help="draw student samples from sft/ and pseudo-label teacher and student answers by agreement",
    ),
    Stage(
        "reward_model",
        Queue.gpu,
        reads=("reward_model",),
        outputs=("{name}/",),
        help="train the reward model (scalar or implicit) on the pseudo-labels",
    ),
    Stage(
        "rl",
        Queue.gpu,
        reads=("rl",),
        outputs=("{name}/",),
        help="PPO or GRPO of sft/ against rl.reward (the reward model, pseudo-labels or gold)",
    ),
    Stage(
        "evaluation",
        Queue.gpu,
        reads=("evaluation",),
        outputs=("evaluation.json", "eval_items/<model>.jsonl"),
        help="greedy accuracy of the teacher and of the evaluation.models checkpoints on the test split",
    ),
)

#: Stage names in the order a job runs them.
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
_BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}

#: Names a variant may not take: the teacher's evaluation row and the work directory's own folders.
RESERVED_NAMES = frozenset({"teacher", "stages", "eval_items", "inputs"})


def get_stage(name: str) -> Stage:
    """The stage called ``name``; ValueError listing the stages otherwise."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")
    return _BY_NAME[name]


def stage_runner(stage: Stage) -> Callable[[Any], dict[str, Any]]:
    """The ``run(ctx: StageContext) -> summary`` function of ``stage``, from ``core/stages/<name>.py``, imported
    on first use: the stage modules import torch, and this module must not (nor name their types)."""
    module = importlib.import_module(f"{__name__}.{stage.name}")
    run: Callable[[Any], dict[str, Any]] = module.run
    return run


@dataclass(frozen=True)
class Variant:
    """The stage ``stage`` run under its own ``name`` with job-spec ``overrides`` (section -> field -> value).

    A plain stage is the variant whose name is the stage's and that overrides nothing (:func:`as_variant`).
    """

    name: str
    stage: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_stage(self.stage)
        if RUN_NAME.fullmatch(self.name) is None:
            raise ValueError(
                f"variant name {self.name!r}: use lower-case letters, digits and _, starting with a letter, at "
                "most 32 characters"
            )
        if self.name != self.stage and (self.name in _BY_NAME or self.name in RESERVED_NAMES):
            raise ValueError(f"variant name {self.name!r} is taken; choose another name")

    def apply(self, spec: JobSpec) -> JobSpec:
        """``spec`` with the overrides merged in and validated (ConfigError naming the variant and the field)."""
        if not self.overrides:
            return spec
        raw = _merge(spec.to_dict(), self.overrides)
        try:
            return JobSpec.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(exc.param, f"in variant {self.name!r}: {exc.message}") from None


def as_variant(stage: str | Variant) -> Variant:
    """``stage`` as a variant (a stage name becomes the plain variant of that stage)."""
    return stage if isinstance(stage, Variant) else Variant(stage, stage)


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def markdown_table() -> str:
    """The stage table as Markdown (docs/architecture.md holds a copy; tests/core/test_stages.py checks it)."""
    rows = [
        "| # | stage | queue | reads (job spec) | writes (work dir) | what it does |",
        "|---|-------|-------|------------------|-------------------|--------------|",
    ]
    for i, s in enumerate(STAGES, start=1):
        reads = ", ".join(f"`{r}`" for r in s.reads)
        outputs = ", ".join(f"`{o}`" for o in s.outputs_of(s.name))
        rows.append(f"| {i} | `{s.name}` | {s.queue} | {reads} | {outputs} | {s.help} |")
    return "\n".join(rows)
