"""PPO as in the paper (InstructGPT-style RLHF), written by us: policy + separate critic, KL penalty to the SFT
reference folded into per-token rewards, sequence reward at the last completion token, GAE, whitened
advantages, clipped policy and value losses.

The critic is a value model: a copy of the policy's trunk with a zero-initialised scalar head
(:func:`core.models.build_reward_model` applied to the policy), or a copy of ``critic_init`` when given (e.g. the
trained reward model, InstructGPT's choice). Its value for completion token ``t`` is the head applied to the
hidden state that predicts that token, so values line up with the policy's log-probabilities. It has its own
AdamW (``cfg.value_lr``); the caller's ``critic_init`` model is never modified.

What is PPO's own is :func:`ppo_advantages` (KL-penalised token rewards, GAE, whitening) and the critic's
:func:`value_objective`; rollout, update and the loop are shared with GRPO (``rollout.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import RLConfig
from twofold.core.models import build_reward_model, on_device
from twofold.core.records import Callbacks
from twofold.core.rl.algos import gae_advantages, kl_penalty, masked_whiten, token_rewards, value_loss
from twofold.core.rl.rollout import (
    BuildPrompt,
    Experience,
    Objective,
    RewardFn,
    frozen_reference,
    model_inputs,
    policy_objective,
    run_rl,
)
from twofold.core.tasks import Item
from twofold.core.training import Learner


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
    # transformers types PreTrainedModel.to as an unbound wrapper, which mypy cannot call
    return on_device(critic, next(policy.parameters()).device).train()


def ppo_advantages(experience: Experience, *, critic: PreTrainedModel, cfg: RLConfig) -> Experience:
    """The advantage step: the critic's values at the rollout, the sequence score (whitened over the batch with
    ``cfg.whiten_rewards``) at the last completion token minus ``cfg.kl_coef`` times the k1 KL at every token,
    GAE with ``cfg.gamma`` and ``cfg.lam``, advantages whitened over the batch's real tokens. Fills ``values``,
    ``advantages`` and ``returns``, all (B, T)."""
    assert experience.scores is not None, "the rewards are scored before the advantages"
    mask = experience.completion_mask
    with torch.no_grad():
        values = completion_values(
            critic, experience.sequences, experience.attention_mask, experience.prompt_len
        )
        scores = experience.scores
        if cfg.whiten_rewards:
            scores = masked_whiten(scores, torch.ones_like(scores))
        kl = kl_penalty(experience.logprobs, experience.ref_logprobs, "k1")  # (B, T)
        rewards = token_rewards(scores, kl, mask, cfg.kl_coef)  # (B, T)
        advantages, returns = gae_advantages(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask)
    return dataclasses.replace(experience, values=values, advantages=advantages, returns=returns)


def value_objective(critic: PreTrainedModel, cfg: RLConfig) -> Objective:
    """The critic's AdamW (``cfg.value_lr``) and ``cfg.vf_coef`` times the clipped value loss against the
    returns of :func:`ppo_advantages`."""
    optimizer = torch.optim.AdamW(critic.parameters(), lr=cfg.value_lr, weight_decay=0.0)

    def loss(m: Experience) -> tuple[torch.Tensor, dict[str, float]]:
        assert m.values is not None and m.returns is not None, "values are computed before the update"
        values = completion_values(critic, m.sequences, m.attention_mask, m.prompt_len)
        vf_loss, vf_clipfrac = value_loss(values, m.values, m.returns, m.completion_mask, cfg.value_clip)
        return cfg.vf_coef * vf_loss, {
            "value_loss": float(vf_loss.detach()),
            "value_clipfrac": float(vf_clipfrac),
        }

    return Objective(Learner(critic, optimizer, cfg.max_grad_norm), loss)


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
            policy_grad_norm, critic_grad_norm, response_len, entropy, step_seconds) and ``progress`` each step;
            ``should_stop`` raises ``Cancelled``.
        state_dir: where resumable state is written every ``cfg.save_every`` steps, at the end and on
            cancellation; a call that finds a state there continues from it.
        critic_init: value-model initialisation (see the module docstring).
        evaluate: optional ``step -> metrics`` called every ``cfg.eval_every`` steps (reported as ``eval_*``).
    Returns:
        summary: algo, steps, resumed_from, first/final/mean reward, kl, seconds, seconds_per_step.
    """
    ref = frozen_reference(policy, ref_policy)
    critic = build_critic(policy, tokenizer, critic_init)
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
        advantages=functools.partial(ppo_advantages, critic=critic, cfg=cfg),
        objectives={
            "policy": policy_objective(policy, cfg, kl_loss=False),
            "critic": value_objective(critic, cfg),
        },
        evaluate=evaluate,
    )
