"""SFT warm-up: fine-tune the student on the teacher responses that agree with the teacher's majority answer.

The loss covers the completion tokens only (prompt tokens are masked with -100). The same loop trains the demo's
tiny teacher on gold worked solutions (:func:`train_causal_lm`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.configs import SFTConfig
from core.labeling import agreeing_teacher_samples
from core.records import Callbacks, Cancelled, TeacherSample
from core.tasks import Item
from core.training import collate, cosine_lr, encode_pairs, load_state, rng_state, save_state, set_rng_state

SAVE_EVERY = 50


def train_causal_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    cfg: SFTConfig,
    callbacks: Callbacks,
    stage: str = "sft",
    state_dir: Path | None = None,
    seed: int = 0,
    stop_when: Callable[[int], bool] | None = None,
    stop_check_every: int = 25,
) -> dict[str, Any]:
    """Train ``model`` in place on (prompt, completion) pairs; completion-only loss; resumable from
    ``state_dir`` (weights, optimiser, step and RNG saved every :data:`SAVE_EVERY` steps).

    ``stop_when(step)``, when given, is asked every ``stop_check_every`` steps (in eval mode, without grad) and
    ends training early when it returns True; the LR schedule stays the one planned for all the steps.

    Returns ``{"steps" (steps taken), "planned_steps", "stopped_early", "examples", "first_loss", "final_loss",
    "seconds"}``.
    """
    if not prompts:
        raise ValueError(f"{stage}: no training examples")
    device = next(model.parameters()).device
    data = encode_pairs(tokenizer, list(prompts), list(completions), max_length=cfg.max_length)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    step, first_loss, ema = 0, None, None
    state = load_state(state_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, first_loss, ema = state["step"], state["first_loss"], state["ema"]
        set_rng_state(state["rng"])
        callbacks.event(stage, "info", "resumed", f"{stage} resumed at step {step}/{total}", {"step": step})
    model.train()
    start = time.monotonic()
    order: list[int] = []
    stopped_early = False
    while step < total:
        epoch, offset = divmod(step * cfg.batch_size, steps_per_epoch * cfg.batch_size)
        # the epoch's order depends only on (seed, epoch), so a resumed run sees the same batches
        order = list(range(len(data)))
        random.Random(f"{seed}-{epoch}").shuffle(order)
        idx = order[offset : offset + cfg.batch_size]
        ids, mask, labels = collate([data[i] for i in idx], tokenizer.pad_token_id, device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, total, cfg.warmup_steps, cfg.lr)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        value = loss.item()
        first_loss = value if first_loss is None else first_loss
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        if step % 10 == 0 or step == total:
            callbacks.metrics(stage, step, {"loss": value, "loss_ema": ema, "lr": opt.param_groups[0]["lr"]})
            callbacks.progress(stage, step, total)
        if callbacks.should_stop():  # every step: cancel must land within seconds
            raise Cancelled(stage)
        if stop_when is not None and step % stop_check_every == 0 and step < total:
            model.eval()
            with torch.no_grad():
                stopped_early = bool(stop_when(step))
            model.train()
            if stopped_early:
                callbacks.progress(stage, step, step)
                break
        if state_dir is not None and (step % SAVE_EVERY == 0) and step < total:
            save_state(
                state_dir,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": step,
                    "first_loss": first_loss,
                    "ema": ema,
                    "rng": rng_state(),
                },
            )
    model.eval()
    return {
        "steps": step,
        "planned_steps": total,
        "stopped_early": stopped_early,
        "examples": len(data),
        "first_loss": first_loss,
        "final_loss": ema,
        "seconds": round(time.monotonic() - start, 2),
    }


def sft_examples(
    items: Sequence[Item],
    samples: Sequence[TeacherSample],
    build_prompt: Callable[[Item], str],
    cfg: SFTConfig,
    *,
    min_vote_share: float = 0.0,
) -> tuple[list[str], list[str]]:
    """(prompts, completions) from the teacher samples that agree with their question's majority."""
    by_id = {it.id: it for it in items}
    prompts, completions = [], []
    per_q: dict[str, int] = {}
    for s in agreeing_teacher_samples(samples, min_vote_share):
        if s.question_id not in by_id:
            continue
        if cfg.max_per_question and per_q.get(s.question_id, 0) >= cfg.max_per_question:
            continue
        per_q[s.question_id] = per_q.get(s.question_id, 0) + 1
        prompts.append(build_prompt(by_id[s.question_id]))
        completions.append(s.text)
    return prompts, completions
