"""Pseudo-labels: every teacher answer and ``labels.student_samples`` answers of the SFT student per question
get label 1 if their answer equals the teacher's majority answer, else 0 (no gold is used).

Questions with no parseable teacher answer, or whose majority share is below ``labels.min_vote_share``, are
dropped. Where gold answers exist, label accuracy against gold is reported (never trained on).
"""

from __future__ import annotations

from typing import Any

import torch

from twofold.core.labeling import kept_questions, label_responses, label_stats, votes_by_question
from twofold.core.models import generate
from twofold.core.records import StudentSample
from twofold.core.stages.context import StageContext
from twofold.core.tasks import Item
from twofold.core.workspace import write_json

#: Student prompts sampled in one generation batch.
BATCH = 256


def run(ctx: StageContext) -> dict[str, Any]:
    """Draw the student samples and label them with the teacher's; returns the label statistics."""
    spec = ctx.spec
    teacher = ctx.teacher_samples()
    votes = votes_by_question(teacher)
    kept = kept_questions(votes, spec.labels.min_vote_share)
    items = [it for it in ctx.data.train if it.id in kept]

    student = _student_samples(ctx, items) if spec.labels.student_samples else []
    ctx.callbacks.student_samples(student)
    _rewrite_jsonl(ctx, "student_samples.jsonl", [s.to_dict() for s in student])

    labels = label_responses(teacher, student, min_vote_share=spec.labels.min_vote_share)
    stats = label_stats(
        labels,
        votes,
        min_vote_share=spec.labels.min_vote_share,
        items=ctx.data.train,
        is_correct=ctx.task.is_correct if spec.data.gold_available else None,
    )
    ctx.callbacks.labels(labels, stats)
    _rewrite_jsonl(ctx, "labels.jsonl", [lab.to_dict() for lab in labels])
    write_json(ctx.workspace.path("label_stats.json"), stats)
    if stats["questions_dropped"]:
        ctx.event(
            "info",
            "questions_dropped",
            f"{stats['questions_dropped']} of {stats['questions_total']} questions dropped "
            "(no parseable teacher answer or vote share below labels.min_vote_share)",
            {"dropped": stats["questions_dropped"]},
        )
    return {k: v for k, v in stats.items() if k != "agreement_histogram"}


def _student_samples(ctx: StageContext, items: list[Item]) -> list[StudentSample]:
    """``labels.student_samples`` samples of the SFT student per item, drawn in batches (seeded)."""
    spec = ctx.spec
    model, tok = ctx.load_policy("sft")
    gen = torch.Generator(device=ctx.device).manual_seed(spec.seed)
    rows = [(it, j) for it in items for j in range(spec.labels.student_samples)]
    student: list[StudentSample] = []
    for i in range(0, len(rows), BATCH):
        chunk = rows[i : i + BATCH]
        out = generate(
            model,
            tok,
            [ctx.task.build_prompt(it) for it, _ in chunk],
            max_new_tokens=spec.labels.max_new_tokens,
            temperature=spec.labels.student_temperature,
            generator=gen,
        )
        student.extend(
            StudentSample(it.id, j, text, ctx.task.extract_answer(text))
            for (it, j), text in zip(chunk, out.texts, strict=True)
        )
        ctx.progress(min(i + BATCH, len(rows)), len(rows))
        ctx.stop_if_cancelled()
    return student


def _rewrite_jsonl(ctx: StageContext, name: str, rows: list[dict[str, Any]]) -> None:
    ctx.workspace.path(name).unlink(missing_ok=True)
    ctx.workspace.append_jsonl(name, rows)
