"""Toy RL setup shared by the PPO and GRPO tests: a micro model, short prompts and a digit-share reward.

The reward is the share of completion characters that are digits: a random micro model starts near 4% and
an RL policy can raise it within ~20 steps, so "reward rises" is a test that can fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from twofold.core.configs import RLConfig
from twofold.core.models import build_tiny
from twofold.core.records import NullCallbacks
from twofold.core.tasks import Item


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run on one intra-op thread: micro-model ops gain nothing from two, and on a shared 2-core machine the
    spinning OpenMP workers made these tests 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def digit_share(items: list[Item], texts: list[str]) -> list[float]:
    """Toy reward: the fraction of the completion's characters that are digits."""
    return [sum(c.isdigit() for c in t) / max(1, len(t)) for t in texts]


def toy_prompt(item: Item) -> str:
    """A short prompt, so rollouts are cheap."""
    return f"Q: {item.question}\nA:"


class Recorder(NullCallbacks):
    """Keeps every metrics/progress/event call; ``stop_after`` makes ``should_stop`` true after that many steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.metric_calls: list[tuple[str, int, dict[str, float]]] = []
        self.progress_calls: list[tuple[str, int, int]] = []
        self.events: list[tuple[str, str, str, dict[str, Any] | None]] = []
        self.stop_after = stop_after

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Record a metrics point."""
        self.metric_calls.append((stage, step, dict(values)))

    def progress(self, stage: str, done: int, total: int) -> None:
        """Record progress."""
        self.progress_calls.append((stage, done, total))

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Record an event."""
        self.events.append((stage, level, type, data))

    def should_stop(self) -> bool:
        """True once ``stop_after`` steps have reported."""
        return self.stop_after is not None and len(self.progress_calls) >= self.stop_after

    def series(self, key: str) -> list[float]:
        """One metric over the steps, in order."""
        return [values[key] for _, _, values in self.metric_calls if key in values]


class ItemLog:
    """A reward function wrapper that records which items each step asked about and what was sampled."""

    def __init__(self) -> None:
        self.items: list[list[str]] = []
        self.texts: list[list[str]] = []

    def __call__(self, items: list[Item], texts: list[str]) -> list[float]:
        self.items.append([it.id for it in items])
        self.texts.append(list(texts))
        return digit_share(items, texts)


def toy_config(algo: str, **overrides: Any) -> RLConfig:
    """A fast config for the toy problem (micro model, 32 responses of at most 16 tokens)."""
    base: dict[str, Any] = dict(
        algo=algo,
        steps=24,
        batch_size=32,
        mini_batch_size=16,
        samples_per_prompt=4 if algo == "grpo" else 1,
        max_new_tokens=16,
        lr=1e-2,
        kl_coef=0.01,
    )
    base.update(overrides)
    return RLConfig(**base)


class Toy:
    """Everything a trainer test needs, handed out by the ``toy`` fixture (conftest is not importable)."""

    config = staticmethod(toy_config)
    reward = staticmethod(digit_share)
    prompt = staticmethod(toy_prompt)
    Recorder = Recorder
    ItemLog = ItemLog

    def __init__(self) -> None:
        # 40 questions: a batch of 8 (GRPO) or 32 (PPO) prompts wraps into a reshuffled epoch within 2-5 steps
        self.items = [Item(id=f"q{i}", question=f"{i}+{i % 7}") for i in range(40)]

    @staticmethod
    def model(seed: int = 0) -> Any:
        """A fresh micro policy and its tokenizer."""
        return build_tiny("micro", seed=seed)

    def train(
        self, algo: str, cb: Recorder, reward_fn: Any = None, model: Any = None, **kw: Any
    ) -> tuple[Any, dict[str, Any]]:
        """Run ``algo``'s trainer on the toy items (a fresh micro model unless ``model`` is given); ``kw`` go to
        the trainer, except config fields, which go to :func:`toy_config`. Returns the model and the summary."""
        from twofold.core.rl.grpo import train_grpo
        from twofold.core.rl.ppo import train_ppo

        trainer = {"ppo": train_ppo, "grpo": train_grpo}[algo]
        fields = {k: kw.pop(k) for k in list(kw) if k in RLConfig.__dataclass_fields__}
        policy, tok = model if model is not None else self.model()
        summary = trainer(
            policy,
            tok,
            ref_policy=None,
            items=self.items,
            build_prompt=toy_prompt,
            reward_fn=reward_fn or digit_share,
            cfg=toy_config(algo, **fields),
            callbacks=cb,
            **kw,
        )
        return policy, summary

    @staticmethod
    def params(model: Any) -> dict[str, Any]:
        """A detached copy of the model's parameters."""
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def toy() -> Toy:
    """The toy RL problem."""
    return Toy()
