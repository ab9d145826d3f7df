"""RL: PPO or GRPO of the SFT student against a reward source, with a KL penalty to the frozen SFT reference.

``rl.reward``: ``reward_model`` (the method: the reward model trained on the pseudo-labels), ``pseudo_label``
(agreement with the teacher's majority answer) or ``gold`` (an upper-bound control on tasks with answers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twofold.core.labeling import kept_questions, votes_by_question
from twofold.core.models import load_tokenizer, save_hf
from twofold.core.reward_model import load_reward_scorer, score_responses
from twofold.core.rl.grpo import train_grpo
from twofold.core.rl.ppo import train_ppo
from twofold.core.stages.context import StageContext
from twofold.core.tasks import Item
from twofold.core.training import clear_state

RewardFn = Callable[[list[Item], list[str]], list[float]]


def run(ctx: StageContext) -> dict[str, Any]:
    """Train the SFT policy; writes the checkpoint to ``<name>/`` and returns the training summary."""
    spec = ctx.spec
    policy, tok = ctx.load_policy("sft")
    ref, _ = ctx.load_policy("sft")
    ref.eval().requires_grad_(False)
    items = ctx.data.train
    majority: dict[str, str] | None = None
    if spec.rl.reward == "pseudo_label":
        kept = kept_questions(votes_by_question(ctx.teacher_samples()), spec.labels.min_vote_share)
        majority = {qid: v.majority for qid, v in kept.items() if v.majority is not None}
        items = [it for it in items if it.id in majority]
    reward_fn = _reward_fn(ctx, majority=majority, ref=ref)

    trainer = train_ppo if spec.rl.algo == "ppo" else train_grpo
    state_dir = ctx.workspace.path(f"{ctx.name}_state")
    summary = trainer(
        policy,
        tok,
        ref_policy=ref,
        items=items,
        build_prompt=ctx.task.build_prompt,
        reward_fn=reward_fn,
        cfg=spec.rl,
        callbacks=ctx.callbacks,
        stage=ctx.name,
        state_dir=state_dir,
        seed=spec.seed,
    )

    out = save_hf(policy, tok, ctx.workspace.path(ctx.name))
    ctx.callbacks.checkpoint(ctx.name, "policy", spec.rl.steps, out)
    clear_state(state_dir)
    summary["reward_source"] = spec.rl.reward
    return summary


def _reward_fn(ctx: StageContext, *, majority: dict[str, str] | None, ref: Any) -> RewardFn:
    """The reward of ``rl.reward``. ``majority``: question id -> the teacher's majority answer (pseudo_label);
    ``ref`` is the frozen SFT model, which an implicit reward model scores against."""
    task, reward = ctx.task, ctx.spec.rl.reward
    if reward == "gold":
        return lambda items, texts: [
            float(task.is_correct(task.extract_answer(t), it.answer))
            for it, t in zip(items, texts, strict=True)
        ]
    if reward == "pseudo_label":
        assert majority is not None
        return lambda items, texts: [
            float(task.extract_answer(t) == majority[it.id]) for it, t in zip(items, texts, strict=True)
        ]
    path = ctx.workspace.path("reward_model")
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{ctx.name}: reward model missing at {path}; run the reward_model stage first"
        )
    scorer = load_reward_scorer(path, ref=ref, device=ctx.device)
    tok = load_tokenizer(path)
    max_len = scorer.max_length or ctx.spec.reward_model.max_length  # score as the model was trained
    return lambda items, texts: score_responses(
        scorer, tok, [task.build_prompt(it) for it in items], texts, max_length=max_len
    )
