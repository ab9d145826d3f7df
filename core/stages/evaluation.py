"""Evaluation: greedy accuracy with a 95% Wilson interval on the test split, for the teacher (through its
endpoint) and for each workspace checkpoint in ``evaluation.models`` (by default ``sft`` and ``rl``).

Each score goes to ``callbacks.evaluation``, ``evaluation.json`` (one entry per model, merged across runs, so a
variant that scores ``rl_gold`` adds to it) and ``eval_items/<model>.jsonl`` (per-item rows).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from twofold.core.evaluation import evaluate_endpoint, evaluate_model
from twofold.core.records import EvalResult
from twofold.core.stages.context import StageContext
from twofold.core.teacher import TeacherClient
from twofold.core.workspace import write_json

#: The teacher's greedy answers, kept as they arrive, so a rerun (a worker died) asks only for the missing ones.
TEACHER_CACHE = "teacher_greedy.jsonl"


def run(ctx: StageContext) -> dict[str, Any]:
    """Score the teacher and the ``evaluation.models`` checkpoints; returns their summaries by model."""
    cfg = ctx.spec.evaluation
    missing = [m for m in cfg.models if not (ctx.workspace.path(m) / "config.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"evaluation.models: no checkpoint {missing[0]!r} in {ctx.workspace.root}; run the stage or variant "
            "of that name first"
        )
    total = len(cfg.models) + int(cfg.evaluate_teacher)
    results: dict[str, Any] = {}
    if cfg.evaluate_teacher:
        results["teacher"] = _report(ctx, _score_teacher(ctx))
        ctx.progress(len(results), total)
    for name in cfg.models:
        results[name] = _report(ctx, _score_checkpoint(ctx, name))
        ctx.progress(len(results), total)
    return results


def _score_checkpoint(ctx: StageContext, name: str) -> EvalResult:
    """Greedy accuracy of the workspace checkpoint ``name``."""
    model, tok = ctx.load_policy(name)
    return evaluate_model(
        model,
        tok,
        ctx.data.test,
        ctx.task,
        model_name=name,
        benchmark=ctx.data.task,
        max_new_tokens=ctx.spec.evaluation.max_new_tokens,
        batch_size=ctx.spec.evaluation.batch_size,
    )


def _score_teacher(ctx: StageContext) -> EvalResult:
    """Greedy accuracy of the teacher through its endpoint, asking only for answers not yet cached."""
    cfg = ctx.spec.teacher
    wave = cfg.concurrency * (cfg.prompts_per_request if cfg.api == "completions" else 1)

    def greedy(prompts: list[str]) -> list[str]:
        done = {row["prompt"]: row["text"] for row in ctx.workspace.read_jsonl(TEACHER_CACHE)}
        missing = [p for p in dict.fromkeys(prompts) if p not in done]

        async def ask() -> None:
            client = TeacherClient(cfg, on_event=ctx.event)
            try:
                for i in range(0, len(missing), wave):
                    chunk = missing[i : i + wave]
                    texts = await client.greedy(chunk, max_tokens=ctx.spec.evaluation.max_new_tokens)
                    ctx.workspace.append_jsonl(
                        TEACHER_CACHE, ({"prompt": p, "text": t} for p, t in zip(chunk, texts, strict=True))
                    )
                    done.update(zip(chunk, texts, strict=True))
            finally:
                await client.aclose()

        asyncio.run(ask())
        return [done[p] for p in prompts]

    return evaluate_endpoint(greedy, ctx.data.test, ctx.task, model_name="teacher", benchmark=ctx.data.task)


def _report(ctx: StageContext, res: EvalResult) -> dict[str, Any]:
    """Hand ``res`` to the callbacks and write it to the workspace; returns its summary."""
    ctx.callbacks.evaluation(res)
    ctx.workspace.path("eval_items").mkdir(exist_ok=True)
    target = f"eval_items/{res.model}.jsonl"
    ctx.workspace.path(target).unlink(missing_ok=True)
    ctx.workspace.append_jsonl(target, res.items)
    path = ctx.workspace.path("evaluation.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    results[res.model] = res.summary()
    write_json(path, results)
    return res.summary()
