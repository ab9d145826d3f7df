"""Run the stages of a job in order, resumable, reporting through callbacks.

Each stage run (a stage of ``core.stages.STAGES``, or a named :class:`core.stages.Variant` of one) calls its
module's ``run(ctx)`` with a :class:`core.stages.context.StageContext`, writes its summary to
``stages/<name>.json`` in the job's work directory, and reports ``stage_started`` / ``stage_finished`` events.
``run_pipeline`` skips the runs that already have a summary, so a rerun resumes an interrupted job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twofold.core.configs import JobSpec
from twofold.core.records import PipelineCallbacks, TeacherSample
from twofold.core.stages import STAGE_NAMES, Variant, as_variant, get_stage, stage_runner
from twofold.core.stages.context import StageContext, TaskData
from twofold.core.workspace import Workspace


def run_stage(
    stage: str | Variant,
    *,
    spec: JobSpec,
    data: TaskData,
    workdir: Path,
    callbacks: PipelineCallbacks,
    teacher_samples: Sequence[TeacherSample] | None = None,
) -> dict[str, Any]:
    """Run one stage (a name, or a variant with its own name and spec overrides); returns its summary, also
    written to ``stages/<name>.json``.

    ``teacher_samples``: samples already persisted elsewhere (the service's DB); their keys are not requested
    again. Without it, ``teacher_samples.jsonl`` in ``workdir`` is the record.
    Raises ``core.records.Cancelled`` when ``callbacks.should_stop()`` turns true, ValueError for an unknown
    stage and ``core.configs.ConfigError`` for a variant's invalid override.
    """
    variant = as_variant(stage)
    run = stage_runner(get_stage(variant.stage))
    spec = variant.apply(spec)
    import torch

    ws = Workspace(workdir)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)  # every stage starts from the same RNG state, however it was reached
    ctx = StageContext(variant.name, variant.stage, spec, data, ws, callbacks, teacher_samples)
    name = variant.name
    start = time.monotonic()
    callbacks.event(name, "info", "stage_started", f"{name} started")
    summary = run(ctx)
    summary["seconds"] = round(time.monotonic() - start, 2)
    ws.mark_done(name, summary)
    callbacks.progress(name, 1, 1)
    callbacks.event(
        name, "info", "stage_finished", f"{name} finished in {summary['seconds']:.1f}s", _jsonable(summary)
    )
    return summary


def run_pipeline(
    spec: JobSpec,
    *,
    data: TaskData,
    workdir: Path,
    callbacks: PipelineCallbacks,
    stages: Sequence[str | Variant] = STAGE_NAMES,
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` (names or variants) in order, skipping those already finished in ``workdir``; returns
    their summaries by run name."""
    runs = [as_variant(s) for s in stages]
    names = [v.name for v in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"stages: a run name appears twice in {names}")
    for variant in runs:  # a bad override fails now, not after the stages before it have run
        variant.apply(spec)
    ws = Workspace(workdir)
    out: dict[str, dict[str, Any]] = {}
    for variant in runs:
        done = ws.done(variant.name)
        if done is not None:
            callbacks.event(
                variant.name, "info", "stage_skipped", f"{variant.name} already finished; reusing its outputs"
            )
            out[variant.name] = done
            continue
        out[variant.name] = run_stage(variant, spec=spec, data=data, workdir=workdir, callbacks=callbacks)
    return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
