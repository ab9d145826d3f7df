"""SFT: fine-tune the student on the teacher answers that agree with their question's majority answer.

With ``sft.holdout_questions``, that many kept questions stay out of the SFT data; every ``sft.check_every``
steps the student's greedy answers to them are compared with the teacher's majority (no gold) and the
checkpoint that agrees most is the one saved.
"""

from __future__ import annotations

from typing import Any

from twofold.core.models import model_from_config, save_hf
from twofold.core.sft import AgreementCheck, holdout_majority, sft_examples, train_causal_lm
from twofold.core.stages.context import StageContext
from twofold.core.training import clear_state


def run(ctx: StageContext) -> dict[str, Any]:
    """Train the student; writes the checkpoint to ``<name>/`` and returns the training summary."""
    spec = ctx.spec
    samples = ctx.teacher_samples()
    majority: dict[str, str] = {}
    if spec.sft.holdout_questions:
        majority = holdout_majority(
            samples, spec.sft.holdout_questions, min_vote_share=spec.labels.min_vote_share, seed=spec.seed
        )
    held_out = [it for it in ctx.data.train if it.id in majority]
    train_items = [it for it in ctx.data.train if it.id not in majority]
    prompts, completions = sft_examples(
        train_items, samples, ctx.task.build_prompt, spec.sft, min_vote_share=spec.labels.min_vote_share
    )
    if not prompts:
        raise ValueError(
            "sft: no teacher response agrees with its question's majority answer; check the "
            "teacher endpoint, teacher.max_tokens and labels.min_vote_share"
        )

    model, tok = model_from_config(
        spec.student.preset, spec.student.path, seed=spec.seed, dtype=spec.student.dtype, device=ctx.device
    )
    check = (
        AgreementCheck(
            model,
            tok,
            held_out,
            majority,
            ctx.task,
            max_new_tokens=spec.labels.max_new_tokens,
            batch_size=spec.evaluation.batch_size,
            patience=spec.sft.patience,
            callbacks=ctx.callbacks,
            stage=ctx.name,
        )
        if held_out
        else None
    )

    state_dir = ctx.workspace.path(f"{ctx.name}_state")
    summary = train_causal_lm(
        model,
        tok,
        prompts,
        completions,
        cfg=spec.sft,
        callbacks=ctx.callbacks,
        stage=ctx.name,
        state_dir=state_dir,
        seed=spec.seed,
        stop_when=check,
        stop_check_every=spec.sft.check_every,
    )
    if check is not None:
        check(summary["steps"])  # the last step competes too
        summary.update(check.keep_best())
        ctx.event(
            "info",
            "best_checkpoint",
            f"{ctx.name} keeps step {summary['best_step']} of {summary['steps']}: its greedy answers agree with "
            f"the teacher's majority on {summary['holdout_agreement']:.1%} of {len(held_out)} held-out questions",
            {"best_step": summary["best_step"], "holdout_agreement": summary["holdout_agreement"]},
        )

    out = save_hf(model, tok, ctx.workspace.path(ctx.name))
    ctx.callbacks.checkpoint(ctx.name, "policy", summary.get("best_step") or summary["steps"], out)
    clear_state(state_dir)
    return summary
