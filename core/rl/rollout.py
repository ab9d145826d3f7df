"""What PPO and GRPO share: one RL step as three named steps around an :class:`Experience` (OpenRLHF's shape,
(B, T) fields), driven by the shared :class:`~twofold.core.training.TrainLoop`.

1. :func:`rollout` samples ``cfg.samples_per_prompt`` responses per prompt and scores their tokens under the policy
   and the frozen reference; the reward function then gives each response its sequence reward (``scores``).
2. The algorithm's ``advantages(experience)`` fills ``advantages`` (PPO: also ``values`` and ``returns``).
3. :func:`update` makes ``cfg.ppo_epochs`` passes over shuffled mini-batches of ``cfg.mini_batch_size``, each cut
   into ``cfg.gradient_accumulation_steps`` micro-batches, and steps every :class:`Objective` on each (the policy;
   PPO adds its critic).

A trainer (``ppo.py``, ``grpo.py``) gives :func:`run_rl` only its advantage function and its objectives; the
policy objective (:func:`policy_objective`) is the same clipped surrogate for both.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import RLConfig
from twofold.core.models import generate
from twofold.core.records import Callbacks
from twofold.core.rl.algos import (
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    policy_loss,
)
from twofold.core.tasks import Item
from twofold.core.training import DataCursor, Learner, RunningStats, TrainLoop, split_evenly

#: ``reward_fn(items_per_response, completions) -> rewards``: one float per completion.
RewardFn = Callable[[list[Item], list[str]], list[float]]
BuildPrompt = Callable[[Item], str]
#: ``loss(micro_batch) -> (loss, metrics)`` over one micro-batch of experience, as a mean over its tokens.
ExperienceLoss = Callable[["Experience"], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Experience:
    """One rollout batch: ``B = prompts * samples_per_prompt`` responses, each prompt's samples consecutive.

    Attributes:
        items: B items, the question each response answers.
        texts: B decoded completions.
        sequences: (B, P + T) left-padded prompt + completion ids (pad after eos).
        attention_mask: (B, P + T) 1 on real prompt and completion tokens.
        completion_mask: (B, T) float, 1.0 on completion tokens up to and including eos.
        prompt_len: P.
        logprobs: (B, T) policy log-probabilities of the sampled tokens at sampling time.
        ref_logprobs: (B, T) the same under the frozen reference.
        entropy: (B, T) policy entropy at each completion position.
        scores: (B,) sequence rewards times ``cfg.reward_scale`` (set after the reward function ran).
        values: (B, T) critic values at the rollout (PPO).
        advantages: (B, T) per-token advantages.
        returns: (B, T) value targets (PPO).
    """

    items: list[Item]
    texts: list[str]
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_len: int
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    entropy: torch.Tensor
    scores: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """B, the number of responses."""
        return self.sequences.shape[0]

    def select(self, idx: torch.Tensor) -> Experience:
        """The responses at ``idx`` (a 1-D index tensor), every per-response field indexed alike."""
        rows = idx.tolist()
        picked: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                picked[f.name] = value[idx]
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in rows]
            else:
                picked[f.name] = value  # prompt_len, or a field not set yet
        return Experience(**picked)

    def split(self, parts: int) -> list[Experience]:
        """``parts`` consecutive micro-batches of (nearly) equal size; ``[self]`` for one part."""
        if parts <= 1:
            return [self]
        return [self.select(torch.tensor(rows)) for rows in split_evenly(range(self.size), parts)]


#: Another name for :class:`Experience`, one rollout batch.
Rollout = Experience


def model_inputs(sequences: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward kwargs for left-padded ``sequences`` (B, L): positions count real tokens only, so a left-padded
    row sees the same positions it saw during generation."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
    return {"input_ids": sequences, "attention_mask": attention_mask, "position_ids": position_ids}


def completion_logprobs(
    model: PreTrainedModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the completion tokens under ``model`` (policy or reference), and optionally the
    entropy at each completion position.

    Logits are divided by ``temperature`` so they describe the distribution the rollout was sampled from.
    Only the last ``T + 1`` positions go through the LM head (``logits_to_keep``).

    Args:
        sequences, attention_mask: (B, P + T); prompt_len: P.
    Returns:
        logprobs (B, T) and entropy (B, T) or None.
    """
    steps = sequences.shape[1] - prompt_len
    out = model(**model_inputs(sequences, attention_mask), logits_to_keep=steps + 1, use_cache=False)
    logits = out.logits[:, :-1].float() / temperature  # (B, T, V): position P-1+t predicts token P+t
    logprobs = logprobs_from_logits(logits, sequences[:, prompt_len:])
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logprobs, entropy


def frozen_reference(policy: PreTrainedModel, ref_policy: PreTrainedModel | None) -> PreTrainedModel:
    """The KL reference: ``ref_policy``, or a copy of ``policy`` as given (before any resumed weights load);
    put in eval mode with gradients off."""
    ref = ref_policy if ref_policy is not None else copy.deepcopy(policy)
    ref.eval()
    ref.requires_grad_(False)
    return ref


@torch.no_grad()
def rollout(
    policy: PreTrainedModel,
    ref_policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Item],
    build_prompt: BuildPrompt,
    *,
    samples_per_prompt: int,
    temperature: float,
    max_new_tokens: int,
    generator: torch.Generator | None = None,
) -> Experience:
    """Sample ``samples_per_prompt`` completions per item with :func:`core.models.generate`, then score the
    sampled tokens under the policy (old log-probabilities, entropy) and the reference."""
    expanded = [item for item in items for _ in range(samples_per_prompt)]
    was_training = policy.training
    policy.eval()
    gen = generate(
        policy,
        tokenizer,
        [build_prompt(item) for item in expanded],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        generator=generator,
    )
    attention_mask = gen.attention_mask
    logprobs, entropy = completion_logprobs(
        policy, gen.sequences, attention_mask, gen.prompt_len, temperature=temperature, with_entropy=True
    )
    ref_logprobs, _ = completion_logprobs(
        ref_policy, gen.sequences, attention_mask, gen.prompt_len, temperature=temperature
    )
    policy.train(was_training)
    assert entropy is not None
    return Experience(
        items=expanded,
        texts=gen.texts,
        sequences=gen.sequences,
        attention_mask=attention_mask,
        completion_mask=gen.completion_mask.float(),
        prompt_len=gen.prompt_len,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        entropy=entropy,
    )


def minibatches(size: int, mini_batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index tensors of ``mini_batch_size`` covering ``range(size)`` once (the last may be smaller)."""
    order = torch.randperm(size, generator=generator, device=generator.device).cpu()
    yield from order.split(mini_batch_size)


@dataclass(frozen=True)
class Objective:
    """A learner and the loss it minimises on a micro-batch of experience (a mean over the micro-batch's
    completion tokens; :func:`update` weights it by its share of the mini-batch's tokens)."""

    learner: Learner
    loss: ExperienceLoss


def policy_objective(policy: PreTrainedModel, cfg: RLConfig, *, kl_loss: bool) -> Objective:
    """The policy's AdamW (``cfg.lr``) and PPO's clipped surrogate on the experience's advantages; with
    ``kl_loss`` (GRPO) plus ``cfg.kl_coef`` times the k3 estimate of KL to the reference, averaged over the real
    completion tokens (PPO folds its KL penalty into the rewards instead)."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)

    def loss(m: Experience) -> tuple[torch.Tensor, dict[str, float]]:
        assert m.advantages is not None, "advantages are computed before the update"
        logprobs, _ = completion_logprobs(
            policy, m.sequences, m.attention_mask, m.prompt_len, temperature=cfg.temperature
        )
        pg_loss, clipfrac = policy_loss(logprobs, m.logprobs, m.advantages, m.completion_mask, cfg.clip_range)
        stats = {"policy_loss": float(pg_loss.detach()), "clipfrac": float(clipfrac)}
        if not kl_loss:
            return pg_loss, stats
        kl = masked_mean(kl_penalty(logprobs, m.ref_logprobs, "k3"), m.completion_mask)
        return pg_loss + cfg.kl_coef * kl, {**stats, "kl_loss": float(kl.detach())}

    return Objective(Learner(policy, optimizer, cfg.max_grad_norm), loss)


def _token_share(
    loss_fn: ExperienceLoss, micro: Experience, tokens: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """``loss_fn`` on ``micro``, weighted by its share of a mini-batch of ``tokens`` completion tokens, so the
    micro-batches' gradients add up to the mini-batch's token mean."""
    share = float(micro.completion_mask.sum()) / tokens
    loss, stats = loss_fn(micro)
    return loss * share, {k: v * share for k, v in stats.items()}


def update(
    experience: Experience, objectives: dict[str, Objective], cfg: RLConfig, generator: torch.Generator
) -> dict[str, float]:
    """The update step: ``cfg.ppo_epochs`` passes over shuffled mini-batches (order drawn from ``generator``);
    on each, every objective takes one optimiser step over ``cfg.gradient_accumulation_steps`` micro-batches.

    Returns the objectives' metrics and each one's ``<name>_grad_norm`` (before clipping), averaged over the
    mini-batches.
    """
    stats = []
    for _ in range(cfg.ppo_epochs):
        for idx in minibatches(experience.size, cfg.mini_batch_size, generator):
            mini = experience.select(idx)
            micro = mini.split(cfg.gradient_accumulation_steps)
            tokens = max(1.0, float(mini.completion_mask.sum()))
            row: dict[str, float] = {}
            for name, objective in objectives.items():
                values, grad_norm = objective.learner.step(
                    micro, functools.partial(_token_share, objective.loss, tokens=tokens)
                )
                row.update(values)
                row[f"{name}_grad_norm"] = grad_norm
            stats.append(row)
    return average(stats)


def run_rl(
    *,
    algo: str,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ref_policy: PreTrainedModel,
    items: Sequence[Item],
    build_prompt: BuildPrompt,
    reward_fn: RewardFn,
    cfg: RLConfig,
    callbacks: Callbacks,
    stage: str,
    state_dir: str | os.PathLike[str] | None,
    seed: int,
    advantages: Callable[[Experience], Experience],
    objectives: dict[str, Objective],
    evaluate: Callable[[int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The RL loop shared by PPO and GRPO (see the module docstring): each step is :func:`rollout`, the reward,
    ``advantages`` and :func:`update`. Resumes from ``state_dir`` when it holds a state (every objective's model
    and optimiser, the sampler RNG, the data cursor and the reward/KL history). Returns the summary."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)  # sampling and mini-batch order
    cursor = DataCursor(len(items), seed, prefix="rl-cursor-")
    history = RunningStats(["reward", "kl"])
    loop = TrainLoop(
        stage=stage,
        kind=algo,
        total_steps=cfg.steps,
        callbacks=callbacks,
        config=cfg,
        learners={name: objective.learner for name, objective in objectives.items()},
        state_dir=state_dir,
        cursor=cursor,
        generators={"sampler": generator},
        extra={"history": history},
    )
    if cfg.eval_every and evaluate is None:
        callbacks.event(
            stage, "warning", "no_evaluator", "rl.eval_every is set but no evaluate function was given"
        )

    def step(_: int) -> dict[str, float]:
        tick = time.monotonic()
        experience = rollout(
            policy,
            ref_policy,
            tokenizer,
            [items[i] for i in cursor.take(cfg.prompts_per_batch)],
            build_prompt,
            samples_per_prompt=cfg.samples_per_prompt,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            generator=generator,
        )
        raw = _check_rewards(reward_fn(experience.items, experience.texts), experience.size)
        scores = torch.tensor(raw, dtype=torch.float32, device=device) * cfg.reward_scale  # (B,)
        experience = dataclasses.replace(experience, scores=scores)
        policy.train()
        experience = advantages(experience)
        stats = update(experience, objectives, cfg, generator)
        mask = experience.completion_mask
        kl = masked_sum(kl_penalty(experience.logprobs, experience.ref_logprobs, "k1"), mask, dim=1).mean()
        values = {
            "reward": sum(raw) / len(raw),
            "kl": float(kl),
            "response_len": float(mask.sum(1).mean()),
            "entropy": float(masked_mean(experience.entropy, mask)),
            **stats,
            "step_seconds": time.monotonic() - tick,
        }
        history.update(values)
        return values

    def evaluate_now(step: int) -> bool:
        if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0:
            callbacks.metrics(stage, step, {f"eval_{k}": v for k, v in evaluate(step).items()})
        return False  # evaluation never ends RL early

    was_training = policy.training
    result = loop.run(step, after_step=evaluate_now)
    policy.train(was_training)
    ran = result.steps - result.resumed_from
    return {
        "algo": algo,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "first_reward": history.first.get("reward"),
        "final_reward": history.last.get("reward"),
        "mean_reward": history.mean("reward"),
        "kl": history.last.get("kl"),
        "seconds": result.seconds,
        "seconds_per_step": result.seconds / ran if ran > 0 else None,
    }


def _check_rewards(raw: Sequence[float], expected: int) -> list[float]:
    values = [float(r) for r in raw]
    if len(values) != expected:
        raise ValueError(f"reward_fn: returned {len(values)} rewards for {expected} completions")
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise ValueError("reward_fn: returned a NaN or infinite reward")
    return values


def average(stats: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of per-mini-batch metric dicts (all with the same keys)."""
    if not stats:
        return {}
    return {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]}
