"""Reinforcement learning of the student: PPO (as in the paper) and GRPO, sharing ``algos`` and ``rollout``."""

from twofold.core.rl.grpo import train_grpo
from twofold.core.rl.ppo import train_ppo

__all__ = ["train_grpo", "train_ppo"]
