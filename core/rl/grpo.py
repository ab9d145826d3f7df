"""GRPO (DeepSeekMath), written by us on the same rollout and state code as PPO: no critic; each response's
advantage is its reward normalised within its prompt's group of ``cfg.samples_per_prompt`` samples, shared by
all its tokens; the loss is PPO's clipped objective plus ``cfg.kl_coef`` times the k3 KL estimate to the
reference, both averaged over the real completion tokens of a mini-batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import RLConfig
from twofold.core.records import Callbacks
from twofold.core.rl.algos import group_advantages, kl_penalty, masked_mean, policy_loss
from twofold.core.rl.rollout import (
    BuildPrompt,
    RewardFn,
    Rollout,
    average,
    clip_and_step,
    completion_logprobs,
    frozen_reference,
    minibatches,
    run_rl,
)
from twofold.core.tasks import Item


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
    (without a critic). Metrics per step: reward, kl, policy_loss, kl_loss, clipfrac, response_len, entropy,
    step_seconds. Needs ``cfg.samples_per_prompt >= 2`` (``RLConfig`` checks it when ``algo == "grpo"``)."""
    if cfg.samples_per_prompt < 2:
        raise ValueError("rl.samples_per_prompt: GRPO needs at least 2 samples per prompt to form a group")
    ref = frozen_reference(policy, ref_policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)

    def update(batch: Rollout, scores: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        mask = batch.completion_mask
        advantages = group_advantages(scores, cfg.samples_per_prompt).unsqueeze(1).expand_as(mask)  # (B, T)
        stats = []
        for _ in range(cfg.ppo_epochs):
            for idx in minibatches(batch.size, cfg.mini_batch_size, generator):
                m = mask[idx]
                logprobs, _ = completion_logprobs(
                    policy,
                    batch.sequences[idx],
                    batch.attention_mask[idx],
                    batch.prompt_len,
                    temperature=cfg.temperature,
                )
                pg_loss, clipfrac = policy_loss(
                    logprobs, batch.logprobs[idx], advantages[idx], m, cfg.clip_range
                )
                kl_loss = masked_mean(kl_penalty(logprobs, batch.ref_logprobs[idx], "k3"), m)
                clip_and_step(pg_loss + cfg.kl_coef * kl_loss, policy, optimizer, cfg.max_grad_norm)
                stats.append(
                    {
                        "policy_loss": float(pg_loss.detach()),
                        "kl_loss": float(kl_loss.detach()),
                        "clipfrac": float(clipfrac),
                    }
                )
        return average(stats)

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
        update=update,
        modules={"policy": policy},
        optimizers={"policy": optimizer},
        evaluate=evaluate,
    )
