"""Pure tensor maths for PPO and GRPO: log-probabilities, KL estimators, rewards, advantages, clipped losses.

Shapes: ``B`` sequences, ``T`` completion tokens, ``V`` vocabulary. A ``mask`` is (B, T) with 1.0 on real
completion tokens (up to and including eos) and 0.0 on padding after it. Every function is side-effect free and
differentiable where a loss needs it; none of them knows about models or tokenizers.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label under ``logits``.

    Args:
        logits: (B, T, V) unnormalised scores (already divided by any sampling temperature).
        labels: (B, T) token ids.
    Returns:
        (B, T) ``log softmax(logits)[labels]`` in float32.
    """
    logits = logits.float()
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position: (B, T, V) -> (B, T), in nats."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)  # (B, T, V)
    return -(logp.exp() * logp).sum(-1)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is 1, over ``dim`` (all elements when None)."""
    if dim is None:
        return (x * mask).sum()
    return (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 when the mask is empty rather than NaN).

    Args:
        x: any shape; mask: same shape (float or bool).
        dim: reduce over this dimension only; None reduces everything to a scalar.
    """
    mask = mask.to(x.dtype)
    return masked_sum(x, mask, dim) / masked_sum(torch.ones_like(x), mask, dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) variance of ``x`` over the masked positions; 0 with fewer than 2 of them."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    centred = (x - masked_mean(x, mask)) * mask
    return (centred**2).sum() / (n - 1).clamp(min=1.0)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to unit (unbiased) variance over the masked positions, and to zero mean if ``shift_mean``.

    Masked-out positions come back as 0. Shapes: ``x`` and ``mask`` alike, e.g. (B, T) or (B,).
    """
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probabilities of tokens sampled by the policy.

    With ``d = ref_logprobs - logprobs`` (Schulman's notation, "Approximating KL divergence"):
    ``k1 = -d`` (unbiased, can be negative), ``k2 = d**2 / 2``, ``k3 = exp(d) - d - 1`` (unbiased, >= 0).

    Args:
        logprobs, ref_logprobs: (B, T).
    Returns:
        (B, T) per-token estimates (not masked).
    """
    d = ref_logprobs - logprobs  # (B, T)
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.expm1(d) - d
    raise ValueError(f"kind: unknown KL estimator {kind!r}; use 'k1', 'k2' or 'k3'")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last position where the mask is 1 (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    return (positions * (mask > 0)).amax(dim=1)


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """InstructGPT-style per-token rewards: ``-kl_coef * kl`` everywhere plus the sequence score at the last
    real completion token.

    Args:
        scores: (B,) one scalar reward per sequence.
        kl: (B, T) per-token KL estimate (usually ``kl_penalty(..., "k1")``).
        mask: (B, T) completion mask.
    Returns:
        (B, T) rewards, 0 on masked-out positions.
    """
    mask = mask.to(kl.dtype)
    rewards = -kl_coef * kl * mask  # (B, T)
    last = last_token_index(mask)  # (B,)
    has_tokens = mask.sum(1) > 0  # (B,)
    bonus = torch.where(has_tokens, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
    return rewards.scatter_add(1, last.unsqueeze(1), bonus.unsqueeze(1))


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over masked completions.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where the value and
    advantage after the last real token are 0 (the episode ends there).

    Args:
        rewards: (B, T) per-token rewards; values: (B, T) critic values at the rollout; mask: (B, T).
    Returns:
        advantages (B, T) and returns ``advantages + values`` (B, T), both 0 on masked-out positions.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    steps = rewards.shape[1]
    next_adv = torch.zeros_like(values[:, 0])  # (B,)
    reversed_adv = []
    for t in reversed(range(steps)):
        if t + 1 < steps:
            next_mask = mask[:, t + 1]  # (B,) 0 once the episode has ended
            next_value = values[:, t + 1]
        else:
            next_mask = torch.zeros_like(next_adv)
            next_value = next_mask
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv * next_mask
        reversed_adv.append(next_adv)
    advantages = torch.stack(reversed_adv[::-1], dim=1) * mask  # (B, T)
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, as a loss to minimise: ``mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))``.

    Args:
        logprobs: (B, T) current policy (with grad); old_logprobs: (B, T) at the rollout;
        advantages: (B, T); mask: (B, T). The mean is over all real tokens of the batch.
    Returns:
        the scalar loss and the fraction of real tokens where clipping was active (a scalar, no grad).
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask).detach()
    return loss, clipfrac


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))`` with
    ``V_clip = V_old + clip(V - V_old, -clip_range, clip_range)``.

    Args:
        values: (B, T) current critic (with grad); old_values: (B, T) at the rollout; returns: (B, T) targets.
    Returns:
        the scalar loss and the fraction of real tokens where the clipped term was the larger (no grad).
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)  # (B, T)
    err = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    clipfrac = masked_mean((err_clipped > err).to(values.dtype), mask).detach()
    return loss, clipfrac


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, over the group's (unbiased) std plus ``eps``.

    Args:
        rewards: (B,) with ``B = prompts * group_size``, each prompt's samples consecutive
            (``[p0s0, p0s1, ..., p1s0, ...]``).
    Returns:
        (B,) advantages; a group whose rewards are all equal gets 0 everywhere.
    """
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"group_size: {rewards.shape[0]} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)  # (B / G, G)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((grouped - mean) / (std + eps)).view(-1)  # (B,)
