"""PPO as in the paper (InstructGPT-style RLHF), written by us: policy + separate critic, KL penalty to the SFT
reference folded into per-token rewards, sequence reward at the last completion token, GAE, whitened
advantages, clipped policy and value losses.

The critic is a value model: a copy of the policy's trunk with a zero-initialised scalar head
(:func:`core.models.build_reward_model` applied to the policy), or a copy of ``critic_init`` when given (e.g. the
trained reward model, InstructGPT's choice). Its value for completion token ``t`` is the head applied to the
hidden state that predicts that token, so values line up with the policy's log-probabilities. It has its own
AdamW (``cfg.value_lr``); the caller's ``critic_init`` model is never modified.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import RLConfig
from twofold.core.models import build_reward_model
from twofold.core.records import Callbacks
from twofold.core.rl.algos import (
    gae_advantages,
    kl_penalty,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from twofold.core.rl.rollout import (
    BuildPrompt,
    RewardFn,
    Rollout,
    average,
    clip_and_step,
    completion_logprobs,
    frozen_reference,
    minibatches,
    model_inputs,
    run_rl,
)
from twofold.core.tasks import Item


def completion_values(
    critic: PreTrainedModel, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
) -> torch.Tensor:
    """Critic values at each completion position: (B, P + T) sequences -> (B, T).

    ``critic`` is a ``*ForSequenceClassification`` model with one label; its trunk (``base_model``) runs on the
    whole sequence and its ``score`` head on the ``T`` hidden states that predict completion tokens.
    """
    hidden = critic.base_model(**model_inputs(sequences, attention_mask), use_cache=False).last_hidden_state
    return critic.get_submodule("score")(hidden[:, prompt_len - 1 : -1]).squeeze(-1).float()  # (B, T)


def build_critic(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    critic_init: PreTrainedModel | str | os.PathLike[str] | None = None,
) -> PreTrainedModel:
    """The value model: a copy of ``critic_init`` (a model or a checkpoint path) or of the policy's trunk with a
    zero scalar head, on the policy's device and in training mode."""
    if critic_init is None:
        critic = build_reward_model(policy, tokenizer)
    elif isinstance(critic_init, str | os.PathLike):
        critic = build_reward_model(critic_init, tokenizer)
    else:
        critic = copy.deepcopy(critic_init)
    if not isinstance(getattr(critic, "score", None), torch.nn.Module):
        raise ValueError("critic_init: expected a *ForSequenceClassification model with a `score` head")
    critic.requires_grad_(True)
    return critic.to(next(policy.parameters()).device).train()


def train_ppo(
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
    critic_init: PreTrainedModel | str | os.PathLike[str] | None = None,
    evaluate: Callable[[int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Train ``policy`` in place with PPO for ``cfg.steps`` rollout batches of ``cfg.batch_size`` responses.

    Args:
        policy: the SFT student, trained in place (save it with ``core.models.save_hf`` afterwards).
        ref_policy: frozen KL reference (the SFT model); None copies ``policy`` as given, before any resume.
        items: training questions; each step takes the next ``cfg.prompts_per_batch`` of a seeded shuffle.
        build_prompt: item -> prompt text.
        reward_fn: ``(items_per_response, completions) -> rewards``, one float per response.
        callbacks: receives ``metrics`` (reward, kl, policy_loss, value_loss, clipfrac, value_clipfrac,
            response_len, entropy, step_seconds) and ``progress`` each step; ``should_stop`` raises ``Cancelled``.
        state_dir: where resumable state is written every ``cfg.save_every`` steps and at the end; a call that
            finds a state there continues from it.
        critic_init: value-model initialisation (see the module docstring).
        evaluate: optional ``step -> metrics`` called every ``cfg.eval_every`` steps (reported as ``eval_*``).
    Returns:
        summary: algo, steps, resumed_from, first/final/mean reward, kl, seconds, seconds_per_step.
    """
    ref = frozen_reference(policy, ref_policy)
    critic = build_critic(policy, tokenizer, critic_init)
    policy_opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=cfg.value_lr, weight_decay=0.0)

    def update(batch: Rollout, scores: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        mask = batch.completion_mask
        with torch.no_grad():
            old_values = completion_values(critic, batch.sequences, batch.attention_mask, batch.prompt_len)
            if cfg.whiten_rewards:
                scores = masked_whiten(scores, torch.ones_like(scores))
            kl = kl_penalty(batch.logprobs, batch.ref_logprobs, "k1")  # (B, T)
            rewards = token_rewards(scores, kl, mask, cfg.kl_coef)  # (B, T)
            advantages, returns = gae_advantages(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, mask)
        stats = []
        for _ in range(cfg.ppo_epochs):
            for idx in minibatches(batch.size, cfg.mini_batch_size, generator):
                seqs, attn, m = batch.sequences[idx], batch.attention_mask[idx], mask[idx]
                logprobs, _ = completion_logprobs(
                    policy, seqs, attn, batch.prompt_len, temperature=cfg.temperature
                )
                pg_loss, clipfrac = policy_loss(
                    logprobs, batch.logprobs[idx], advantages[idx], m, cfg.clip_range
                )
                clip_and_step(pg_loss, policy, policy_opt, cfg.max_grad_norm)
                values = completion_values(critic, seqs, attn, batch.prompt_len)
                vf_loss, vf_clipfrac = value_loss(values, old_values[idx], returns[idx], m, cfg.value_clip)
                clip_and_step(cfg.vf_coef * vf_loss, critic, critic_opt, cfg.max_grad_norm)
                stats.append(
                    {
                        "policy_loss": float(pg_loss.detach()),
                        "value_loss": float(vf_loss.detach()),
                        "clipfrac": float(clipfrac),
                        "value_clipfrac": float(vf_clipfrac),
                    }
                )
        return average(stats)

    return run_rl(
        algo="ppo",
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
        modules={"policy": policy, "critic": critic},
        optimizers={"policy": policy_opt, "critic": critic_opt},
        evaluate=evaluate,
    )
