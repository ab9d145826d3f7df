"""GRPO specifics: equal rewards within a group give no policy-gradient signal; single-sample groups are
refused. (Learning, cancel and resume for both trainers: ``test_rollout.py``.)"""

from __future__ import annotations

from typing import Any

import pytest

from twofold.core.configs import RLConfig
from twofold.core.rl.grpo import train_grpo


def test_grpo_equal_rewards_in_a_group_give_zero_advantage(toy: Any) -> None:
    cb = toy.Recorder()
    # every prompt's group gets one reward value (its index parity), so group-normalised advantages are 0
    parity = lambda items, texts: [float(int(it.id[1:]) % 2) for it in items]  # noqa: E731
    toy.train("grpo", cb, parity, steps=3)
    assert all(0.0 < r < 1.0 for r in cb.series("reward"))  # both parities in every batch: rewards did vary
    assert cb.series("policy_loss") == [0.0, 0.0, 0.0]
    assert cb.series("clipfrac") == [0.0, 0.0, 0.0]


def test_grpo_refuses_single_sample_groups(toy: Any) -> None:
    model, tok = toy.model()
    cfg = RLConfig(
        algo="ppo", steps=1, batch_size=8, mini_batch_size=8
    )  # samples_per_prompt 1 is fine for PPO
    with pytest.raises(ValueError, match="samples_per_prompt"):
        train_grpo(
            model,
            tok,
            ref_policy=None,
            items=toy.items,
            build_prompt=toy.prompt,
            reward_fn=toy.reward,
            cfg=cfg,
            callbacks=toy.Recorder(),
        )
