"""Ready-made job specs (``smoke``, ``demo``); torch-free, so the API can resolve presets.

A preset is a raw spec dict for :meth:`core.configs.JobSpec.from_dict`; the teacher endpoint is filled in by the
caller (the CLI's demo starts the built-in teacher server; the service uses its configured preset teacher).
"""

from __future__ import annotations

import copy
from typing import Any

PRESET_DESCRIPTIONS: dict[str, str] = {
    "smoke": "tiny models on 64 arithmetic questions; every stage runs for a few steps (about a minute on CPU)",
    "demo": "the `make demo` setup: tiny student distilled from the tiny arithmetic teacher, PPO on an implicit "
    "reward model, 1,000 held-out problems (9-19 minutes on 2 CPU cores, depending on the CPU)",
}

_DEMO: dict[str, Any] = {
    "data": {"task": "arithmetic", "train_size": 4000, "test_size": 1000, "seed": 0},
    "teacher": {
        "temperatures": [0.5, 0.8],
        "n": 2,
        "max_tokens": 56,
        "prompts_per_request": 64,
        "concurrency": 2,
        "timeout_s": 120,
    },
    "student": {"preset": "tiny-student"},
    "sft": {
        "epochs": 8,
        "lr": 1e-2,
        "warmup_steps": 60,
        "batch_size": 64,
        "max_length": 128,
        "holdout_questions": 200,
        "check_every": 50,
    },
    "labels": {"student_samples": 4, "min_vote_share": 0.5, "max_new_tokens": 56},
    "reward_model": {
        "kind": "implicit",
        "init": "sft",
        "beta": 0.5,
        "epochs": 1,
        "lr": 1e-4,
        "batch_size": 64,
        "max_length": 128,
    },
    "rl": {
        "algo": "ppo",
        "reward": "reward_model",
        "steps": 75,
        "batch_size": 64,
        "mini_batch_size": 64,
        "ppo_epochs": 1,
        "lr": 1e-4,
        "value_lr": 1e-3,
        "kl_coef": 0.05,
        "max_new_tokens": 56,
    },
    "evaluation": {"max_new_tokens": 56, "batch_size": 250},
    "seed": 0,
}

_SMOKE: dict[str, Any] = {
    "data": {"task": "arithmetic", "train_size": 64, "test_size": 64, "seed": 0},
    "teacher": {
        "temperatures": [0.7, 1.0],
        "n": 2,
        "max_tokens": 48,
        "prompts_per_request": 32,
        "concurrency": 2,
        "timeout_s": 60,
    },
    "student": {"preset": "tiny-student"},
    "sft": {"epochs": 1, "batch_size": 32, "max_length": 160},
    "labels": {"student_samples": 2, "min_vote_share": 0.0, "max_new_tokens": 48},
    "reward_model": {"init": "sft", "epochs": 1, "batch_size": 32, "max_length": 160},
    "rl": {
        "algo": "ppo",
        "reward": "reward_model",
        "steps": 3,
        "batch_size": 16,
        "mini_batch_size": 8,
        "ppo_epochs": 1,
        "max_new_tokens": 48,
    },
    "evaluation": {"max_new_tokens": 48, "batch_size": 64},
    "seed": 0,
}
PRESETS: dict[str, dict[str, Any]] = {"smoke": _SMOKE, "demo": _DEMO}


def preset_spec(
    name: str, *, teacher_base_url: str, teacher_model: str, api_key: str | None = None
) -> dict[str, Any]:
    """The raw spec of preset ``name`` pointed at the given teacher endpoint."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    spec = copy.deepcopy(PRESETS[name])
    spec["teacher"].update(base_url=teacher_base_url, model=teacher_model)
    if api_key:
        spec["teacher"]["api_key"] = api_key
    return spec
