"""GRPO (DeepSeekMath), written by us on the same rollout and state code as PPO: no critic; each response's
advantage is its reward normalised within its prompt's group of ``cfg.samples_per_prompt`` samples, shared by
all its tokens; the loss is PPO's clipped objective plus ``cfg.kl_coef`` times the k3 KL estimate to the
reference, both averaged over the real completion tokens of a mini-batch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import RLConfig
from twofold.core.records import Callbacks
from twofold.core.rl.algos import group_advantages
from twofold.core.rl.rollout import (
    BuildPrompt,
    Experience,
    RewardFn,
    frozen_reference,
    policy_objective,
    run_rl,
)
from twofold.core.tasks import Item


def grpo_advantages(experience: Experience, *, cfg: RLConfig) -> Experience:
    """The advantage step: each response's score normalised within its prompt's group of
    ``cfg.samples_per_prompt`` samples, shared by all its tokens. Fills ``advantages`` (B, T)."""
    assert experience.scores is not None, "the rewards are scored before the advantages"
    group = group_advantages(experience.scores, cfg.samples_per_prompt)  # (B,)
    return dataclasses.replace(
        experience, advantages=group.unsqueeze(1).expand_as(experience.completion_mask)
    )


def train_grpo(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    ref_policy: PreTrainedModel | None,
    items: list[Item],
    build_prompt: BuildPrompt,
    reward_fn: RewardFn,
    cfg: RLConfig,
    callbacks: Callbacks,
    stage: str = "rl",
    state_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    evaluate: Callable[[int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train ``policy`` in place with GRPO; arguments, state and summary as :func:`core.rl.ppo.train_ppo`
    (without a critic). Metrics per step: reward, kl, policy_loss, kl_loss, clipfrac, policy_grad_norm,
    response_len, entropy, step_seconds. Needs ``cfg.samples_per_prompt >= 2`` (``RLConfig`` checks it when
    ``algo == "grpo"``)."""
    if cfg.samples_per_prompt < 2:
        raise ValueError("rl.samples_per_prompt: GRPO needs at least 2 samples per prompt to form a group")
    ref = frozen_reference(policy, ref_policy)
    return run_rl(
        algo="grpo",
        policy=policy,
        tokenizer=tokenizer,
        ref_policy=ref,
        items=items,
        build_prompt=build_prompt,
        reward_fn=reward_fn,
        cfg=cfg,
        callbacks=callbacks,
        stage=stage,
        state_dir=state_dir,
        seed=seed,
        advantages=functools.partial(grpo_advantages, cfg=cfg),
        objectives={"policy": policy_objective(policy, cfg, kl_loss=True)},
        evaluate=evaluate,
    )
