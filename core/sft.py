"""SFT warm-up: fine-tune the student on the teacher responses that agree with the teacher's majority answer.

The loss covers the completion tokens only (prompt tokens are masked with -100). The same loop trains the demo's
tiny teacher on gold worked solutions (:func:`train_causal_lm`).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import SFTConfig
from twofold.core.labeling import agreeing_teacher_samples, kept_questions, votes_by_question
from twofold.core.records import Callbacks, TeacherSample
from twofold.core.tasks import Item
from twofold.core.training import (
    DataCursor,
    Learner,
    RunningStats,
    Stateful,
    TrainLoop,
    collate,
    cosine_lr,
    encode_pairs,
    split_evenly,
)


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
    """Train ``model`` in place on (prompt, completion) pairs with a completion-only loss, on the shared
    :class:`~twofold.core.training.TrainLoop`: ``cfg.batch_size`` sequences per optimiser step in
    ``cfg.gradient_accumulation_steps`` micro-batches, gradients clipped to ``cfg.max_grad_norm``, resumable
    from ``state_dir`` (written every ``cfg.save_every`` steps, at the end and on cancellation).

    ``stop_when(step)``, when given, is asked every ``stop_check_every`` steps before the last (in eval mode,
    without grad) and ends training early when it returns True; the LR schedule stays the one planned for all
    the steps. When it has ``state_dict``/``load_state_dict`` (as :class:`AgreementCheck` has), its state is
    saved and resumed with the rest.

    Returns ``{"steps" (steps taken), "planned_steps", "stopped_early", "examples", "first_loss", "final_loss"
    (the loss's moving average), "resumed_from", "seconds"}``.
    """
    if not prompts:
        raise ValueError(f"{stage}: no training examples")
    device = next(model.parameters()).device
    data = encode_pairs(tokenizer, list(prompts), list(completions), max_length=cfg.max_length)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    learner = Learner(model, opt, cfg.max_grad_norm)
    # each epoch's order depends only on (seed, epoch), so a resumed run sees the same batches
    cursor = DataCursor(len(data), seed)
    losses = RunningStats(["loss"])
    extra: dict[str, Stateful] = {"losses": losses}
    if isinstance(stop_when, Stateful):
        extra["stopper"] = stop_when
    loop = TrainLoop(
        stage=stage,
        kind="causal_lm",
        total_steps=total,
        callbacks=callbacks,
        config=cfg,
        learners={"model": learner},
        state_dir=state_dir,
        cursor=cursor,
        extra=extra,
        log_every=10,
    )

    def step(i: int) -> dict[str, float]:
        batch = cursor.next_batch(cfg.batch_size)
        micro = [
            collate([data[j] for j in part], tokenizer.pad_token_id, device)
            for part in split_evenly(batch, cfg.gradient_accumulation_steps)
        ]
        # the model's loss is a mean over a micro-batch's label tokens; weighting it by its share of the
        # batch's label tokens makes the accumulated gradient the whole batch's mean
        tokens = [int((labels[:, 1:] != -100).sum()) for _, _, labels in micro]
        batch_tokens = max(1, sum(tokens))

        def loss_fn(k: int) -> tuple[torch.Tensor, dict[str, float]]:
            ids, mask, labels = micro[k]
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss * (tokens[k] / batch_tokens)
            return loss, {"loss": loss.item()}

        lr = cosine_lr(i, total, cfg.warmup_steps, cfg.lr)
        learner.set_lr(lr)
        stats, grad_norm = learner.step(range(len(micro)), loss_fn)
        losses.update(stats)
        return {"loss": stats["loss"], "loss_ema": losses.ema["loss"], "lr": lr, "grad_norm": grad_norm}

    def check(i: int) -> bool:
        if stop_when is None or i % stop_check_every or i >= total:
            return False
        model.eval()
        with torch.no_grad():
            stop = bool(stop_when(i))
        model.train()
        return stop

    model.train()
    result = loop.run(step, after_step=check)
    model.eval()
    return {
        "steps": result.steps,
        "planned_steps": total,
        "stopped_early": result.stopped_early,
        "examples": len(data),
        "first_loss": losses.first.get("loss"),
        "final_loss": losses.ema.get("loss"),
        "resumed_from": result.resumed_from,
        "seconds": round(result.seconds, 2),
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
        """The checks so far and the best weights (on the CPU), saved with the training state."""
        return {
            "checks": list(self.checks),
            "best_step": self.best_step,
            "best_agreement": self.best_agreement,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        self.checks = list(state["checks"])
        self.best_step, self.best_agreement = state["best_step"], state["best_agreement"]
        self.best_weights = state["best_weights"]
