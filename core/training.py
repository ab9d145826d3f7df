"""Shared training plumbing: tokenising (prompt, completion) pairs, batching, LR schedule, resumable state."""

from __future__ import annotations

import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Encoded:
    """Token ids of ``prompt + completion (+ eos)``; the first ``prompt_len`` ids are the prompt."""

    ids: list[int]
    prompt_len: int


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    *,
    max_length: int,
    add_eos: bool = True,
) -> list[Encoded]:
    """Tokenise each pair without special tokens; truncate from the right to ``max_length``."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(p_ids, c_ids, strict=True):
        ids = p + c + ([tokenizer.eos_token_id] if add_eos else [])
        out.append(Encoded(ids[:max_length], min(len(p), max_length)))
    return out


def collate(
    batch: list[Encoded], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch. Returns input_ids (B, L), attention_mask (B, L) and labels (B, L) where prompt and
    padding positions are -100, so the loss covers the completion only."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return ids.to(device), mask.to(device), labels.to(device)


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Linear warm-up to ``peak`` then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled index batches covering ``range(n)`` once (the last batch may be short)."""
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def rng_state() -> dict[str, Any]:
    """Python and torch RNG states, for exact resumption."""
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def save_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, optimiser dicts, step, cursor, config) atomically to ``state_dir/state.pt``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "state.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, state_dir / "state.pt")


def load_state(state_dir: Path | None) -> dict[str, Any] | None:
    """The saved state, or None when there is none."""
    if state_dir is None or not (state_dir / "state.pt").exists():
        return None
    return torch.load(state_dir / "state.pt", weights_only=False)


def clear_state(state_dir: Path | None) -> None:
    """Remove resume state once a stage has finished and saved its final checkpoint."""
    if state_dir is not None and state_dir.exists():
        shutil.rmtree(state_dir)
