"""SFT warm-up: fine-tune the student on the teacher responses that agree with the teacher's majority answer.

The loss covers the completion tokens only (prompt tokens are masked with -100). The same loop trains the demo's
tiny teacher on gold worked solutions (:func:`train_causal_lm`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import SFTConfig
from twofold.core.labeling import agreeing_teacher_samples, kept_questions, votes_by_question
from twofold.core.records import Callbacks, Cancelled, TeacherSample
from twofold.core.tasks import Item
from twofold.core.training import (
    collate,
    cosine_lr,
    encode_pairs,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)

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
    ends training early when it returns True; the LR schedule stays the one planned for all the steps. When it
    has ``state_dict``/``load_state_dict`` (as :class:`AgreementCheck` has), its state is saved and resumed with
    the rest.

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
        if state.get("stopper") is not None and hasattr(stop_when, "load_state_dict"):
            stop_when.load_state_dict(state["stopper"])
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
                    "stopper": stop_when.state_dict() if hasattr(stop_when, "state_dict") else None,
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


def holdout_majority(
    samples: Sequence[TeacherSample], n: int, *, min_vote_share: float, seed: int
) -> dict[str, str]:
    """``n`` kept questions drawn (seeded) to stay out of SFT, mapped to the teacher's majority answer."""
    votes = kept_questions(votes_by_question(samples), min_vote_share)
    if n >= len(votes):
        raise ValueError(
            f"sft.holdout_questions: {n} held-out questions leave nothing to train on ({len(votes)} questions "
            "have a teacher majority); lower it"
        )
    chosen = random.Random(f"{seed}-sft-holdout").sample(sorted(votes), n)
    return {q: str(votes[q].majority) for q in chosen}


class AgreementCheck:
    """A label-free check for SFT: how often the student's greedy answer equals the teacher's majority answer on
    questions held out of SFT (no gold). Used as ``stop_when`` of :func:`train_causal_lm`: it records every check,
    keeps a copy of the weights that agree most (on a tie, the earlier check's), and asks to stop after
    ``patience`` checks in a row without a higher agreement (``patience=0``: never). Call :meth:`keep_best` after
    training to load the best weights.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        items: Sequence[Item],
        majority: dict[str, str],
        task: Any,
        *,
        max_new_tokens: int,
        batch_size: int = 64,
        patience: int = 0,
        callbacks: Callbacks | None = None,
        stage: str = "sft",
    ) -> None:
        if not items:
            raise ValueError(f"{stage}: the agreement check needs at least one held-out question")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.items, self.majority = items, majority
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.patience, self.callbacks, self.stage = patience, callbacks, stage
        self.checks: list[dict[str, float]] = []
        self.best_step: int | None = None
        self.best_agreement = -1.0
        self.best_weights: dict[str, torch.Tensor] | None = None

    def agreement(self) -> float:
        """The share of held-out questions whose greedy answer equals the teacher's majority answer."""
        from twofold.core.evaluation import evaluate_model

        # scored as accuracy against the teacher's majority in place of a gold answer
        as_graded = [dataclasses.replace(it, answer=self.majority[it.id]) for it in self.items]
        return evaluate_model(
            self.model,
            self.tokenizer,
            as_graded,
            self.task,
            model_name=self.stage,
            benchmark="holdout-agreement",
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
        ).accuracy

    def __call__(self, step: int) -> bool:
        if self.checks and self.checks[-1]["step"] == step:
            return False  # already checked at this step
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            agree = self.agreement()
        self.model.train(was_training)
        self.checks.append({"step": step, "agreement": round(agree, 4)})
        if self.callbacks is not None:
            self.callbacks.metrics(self.stage, step, {"holdout_agreement": agree})
        if agree > self.best_agreement:
            self.best_step, self.best_agreement = step, agree
            # on the CPU: a copy on the accelerator would cost as much memory as the model itself
            self.best_weights = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
        since_best = sum(1 for c in self.checks if c["step"] > (self.best_step or 0))
        return self.patience > 0 and since_best >= self.patience

    def keep_best(self) -> dict[str, Any]:
        """Load the weights of the best check into the model; returns what was chosen."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        return {
            "checks": self.checks,
            "best_step": self.best_step,
            "holdout_agreement": round(self.best_agreement, 4) if self.best_step is not None else None,
            "holdout_questions": len(self.items),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "checks": list(self.checks),
            "best_step": self.best_step,
            "best_agreement": self.best_agreement,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.checks = list(state["checks"])
        self.best_step, self.best_agreement = state["best_step"], state["best_agreement"]
        self.best_weights = state["best_weights"]
