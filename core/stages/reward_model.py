"""Reward model: trained on the pseudo-labels with BCE and/or Bradley-Terry over (agreeing, disagreeing) pairs.

``reward_model.kind`` ``scalar`` is a ``*ForSequenceClassification`` head on the student's base or the SFT
checkpoint; ``implicit`` is a causal LM copied from the SFT student, scored as ``beta * log(pi_rm / pi_sft)``.
``twofold_reward.json`` beside the weights records the kind, so RL loads the right scorer.
"""

from __future__ import annotations

import copy
from typing import Any

from twofold.core.models import build_reward_model, model_from_config, on_device
from twofold.core.reward_model import save_reward_model, train_reward_model
from twofold.core.stages.context import StageContext
from twofold.core.training import clear_state


def run(ctx: StageContext) -> dict[str, Any]:
    """Train the reward model; writes it to ``<name>/`` and returns its summary (held-out accuracy, kind)."""
    spec = ctx.spec
    cfg = spec.reward_model
    labels = ctx.labels()

    ref = None
    if cfg.kind == "implicit":
        rm, tok = ctx.load_policy("sft")  # trained in place; a frozen copy of the SFT model is its reference
        ref = copy.deepcopy(rm)
    else:
        if cfg.init == "sft":
            base, tok = ctx.load_policy("sft")
        else:
            base, tok = model_from_config(
                spec.student.preset,
                spec.student.path,
                seed=spec.seed + 1,
                dtype=spec.student.dtype,
                device=ctx.device,
            )
        # transformers types `to` through a wrapper that mypy reads as taking the model first
        rm = on_device(build_reward_model(base, tok), ctx.device)
        del base

    state_dir = ctx.workspace.path(f"{ctx.name}_state")
    summary = train_reward_model(
        rm,
        tok,
        labels,
        ctx.data.train,
        ctx.task.build_prompt,
        cfg=cfg,
        callbacks=ctx.callbacks,
        stage=ctx.name,
        state_dir=state_dir,
        seed=spec.seed,
        ref=ref,
    )

    out = save_reward_model(rm, tok, ctx.workspace.path(ctx.name), cfg)
    ctx.callbacks.checkpoint(ctx.name, "reward_model", summary["steps"], out)
    clear_state(state_dir)
    summary["kind"] = cfg.kind
    return summary
