"""Teacher sampling: ``teacher.n`` samples per training question at each of ``teacher.temperatures``.

Each response is persisted (``callbacks.teacher_samples``, then ``teacher_samples.jsonl``) before it is used, and
keys already recorded are never requested again, so a resumed run pays only for what is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from twofold.core.records import TeacherSample
from twofold.core.stages.context import StageContext
from twofold.core.teacher import TeacherClient, TeacherUsage


def run(ctx: StageContext) -> dict[str, Any]:
    """Sample the teacher for every training question; returns counts and the teacher's usage."""
    cfg = ctx.spec.teacher
    existing = ctx.teacher_samples()
    total = len(ctx.data.train) * cfg.samples_per_question
    done = len({s.key for s in existing})
    ctx.progress(done, total)
    new_samples: list[TeacherSample] = []

    def sink(batch: list[TeacherSample]) -> None:
        nonlocal done
        new_samples.extend(batch)
        ctx.callbacks.teacher_samples(batch)  # persist first: a resumed job never pays for these again
        ctx.workspace.append_jsonl("teacher_samples.jsonl", (s.to_dict() for s in batch))
        done += len(batch)
        ctx.progress(done, total)
        ctx.stop_if_cancelled()

    async def sample() -> TeacherUsage:
        client = TeacherClient(cfg, on_event=ctx.event)
        try:
            await client.check()
            return await client.sample(
                ctx.data.train,
                build_prompt=ctx.task.build_prompt,
                extract_answer=ctx.task.extract_answer,
                skip=frozenset(s.key for s in existing),
                sink=sink,
            )
        finally:
            await client.aclose()

    usage = asyncio.run(sample())
    samples = {s.key: s for s in existing}
    samples.update((s.key, s) for s in new_samples)
    return {
        "samples": len(samples),
        "reused": len(existing),
        "parseable": sum(s.answer is not None for s in samples.values()),
        "usage": dataclasses.asdict(usage),
    }
