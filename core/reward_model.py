"""Reward model: a small model that scores a (question, response) pair, trained on the pseudo-labelled responses.

Two kinds (``RewardModelConfig.kind``), one training loop:

- ``scalar``: a linear head on the hidden state of the last token (``*ForSequenceClassification``); the score is
  that head's output.
- ``implicit``: a causal LM, initialised from the SFT student, scored against the frozen SFT model (``ref``):
  ``r = beta * sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]`` over the response tokens. It starts at
  ``r = 0`` everywhere and learns through the language-model head, which already knows the task, so it needs far
  fewer labels than a fresh scalar head (Yuan et al. 2024, "Free Process Rewards without Process Labels").

Either score is the logit of "this response agrees with the teacher's majority". Losses: pointwise BCE on the 0/1
pseudo-labels, and pairwise Bradley-Terry ``-log sigmoid(r+ - r-)`` over every (agreeing, disagreeing) pair of
responses to the same question within a batch. Batches are built question by question so that such pairs exist.
Accuracy is reported on held-out questions. The reward handed to RL is ``sigmoid(score)``, in (0, 1).

A saved reward model directory holds the HF checkpoint plus ``twofold_reward.json`` (kind, beta, max_length);
:func:`load_reward_scorer` reads both back.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import RewardModelConfig
from twofold.core.models import on_device
from twofold.core.records import Callbacks, Label
from twofold.core.rl.rollout import completion_logprobs
from twofold.core.tasks import Item
from twofold.core.training import (
    DataCursor,
    Encoded,
    Learner,
    TrainLoop,
    cosine_lr,
    encode_pairs,
    pack,
    split_evenly,
)

META_FILE = "twofold_reward.json"


@dataclass
class RewardScorer:
    """How to turn a batch into scores: ``rm`` alone (``scalar``) or ``rm`` against ``ref`` (``implicit``)."""

    rm: PreTrainedModel
    kind: str = "scalar"
    ref: PreTrainedModel | None = None
    beta: float = 1.0
    max_length: int | None = None  # the length it was trained at, when loaded from a saved directory

    def __post_init__(self) -> None:
        if self.kind == "implicit" and self.ref is None:
            raise ValueError("reward_model: an implicit reward model needs its reference (the SFT model)")
        if self.ref is not None:
            self.ref.eval().requires_grad_(False)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
        """(B,) score logits for left-padded ``ids``/``mask`` (B, L); ``completion`` (B, L) marks response tokens."""
        if self.kind == "scalar":
            return _scores(self.rm, ids, mask)
        assert self.ref is not None
        steps = int(completion.sum(1).max())  # responses end at the right edge, so they fit the last `steps`
        plen = ids.shape[1] - steps
        logp, _ = completion_logprobs(self.rm, ids, mask, plen)  # (B, steps)
        with torch.no_grad():
            ref_logp, _ = completion_logprobs(self.ref, ids, mask, plen)  # (B, steps)
        return self.beta * ((logp - ref_logp) * completion[:, plen:]).sum(1)  # (B,)


def _pad_left(
    batch: list[Encoded], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad a batch: ids (B, L), attention mask (B, L), and a float mask (B, L) over response tokens."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    completion = torch.zeros((len(batch), width))
    for i, e in enumerate(batch):
        start = width - len(e.ids)
        ids[i, start:] = torch.tensor(e.ids)
        mask[i, start:] = 1
        completion[i, start + e.prompt_len :] = 1.0
    return ids.to(device), mask.to(device), completion.to(device)


def _scores(rm: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) scalar logits read at the last token (inputs are left-padded, so that is position -1)."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = rm.base_model(
        input_ids=ids, attention_mask=mask, position_ids=pos
    ).last_hidden_state  # (B, L, H)
    return rm.get_submodule("score")(hidden[:, -1, :]).squeeze(-1).float()  # (B,)


def bradley_terry_loss(
    scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Mean ``-log sigmoid(s_i - s_j)`` over pairs with ``groups[i] == groups[j]``, ``labels[i]=1``,
    ``labels[j]=0``. Shapes: scores (B,), labels (B,), groups (B,). Returns (loss, number of pairs)."""
    same = groups.unsqueeze(1).eq(groups.unsqueeze(0))  # (B, B)
    pos_neg = labels.unsqueeze(1).gt(0.5) & labels.unsqueeze(0).lt(0.5)  # (B, B)
    pairs = same & pos_neg
    n = int(pairs.sum())
    if n == 0:
        return scores.sum() * 0.0, 0
    diff = scores.unsqueeze(1) - scores.unsqueeze(0)  # (B, B)
    return -F.logsigmoid(diff[pairs]).mean(), n


def train_reward_model(
    rm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    labels: Sequence[Label],
    items: Sequence[Item],
    build_prompt: Callable[[Item], str],
    *,
    cfg: RewardModelConfig,
    callbacks: Callbacks,
    stage: str = "reward_model",
    state_dir: Path | None = None,
    seed: int = 0,
    ref: PreTrainedModel | None = None,
) -> dict[str, Any]:
    """Train ``rm`` in place on the shared :class:`~twofold.core.training.TrainLoop`; returns metrics incl.
    held-out ``accuracy`` and ``pairwise_accuracy``.

    ``cfg.kind == "implicit"``: ``rm`` is a causal LM initialised from the SFT model and ``ref`` that SFT model,
    frozen (see the module docstring); ``scalar``: ``rm`` is a ``*ForSequenceClassification`` and ``ref`` unused.
    A step takes whole questions until it holds ``cfg.batch_size`` responses, split by question into
    ``cfg.gradient_accumulation_steps`` micro-batches; gradients are clipped to ``cfg.max_grad_norm``; the state
    in ``state_dir`` is written every ``cfg.save_every`` steps, at the end and on cancellation.
    """
    scorer = RewardScorer(rm, cfg.kind, ref if cfg.kind == "implicit" else None, cfg.beta)
    by_id = {it.id: it for it in items}
    labels = [lab for lab in labels if lab.question_id in by_id]
    if not labels:
        raise ValueError(f"{stage}: no labelled responses to train on")
    device = next(rm.parameters()).device
    enc = encode_pairs(
        tokenizer,
        [build_prompt(by_id[lab.question_id]) for lab in labels],
        [lab.text for lab in labels],
        max_length=cfg.max_length,
        add_eos=False,
    )
    by_q: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_q[lab.question_id].append(i)
    qids = sorted(by_q)
    random.Random(f"rm-holdout-{seed}").shuffle(qids)
    n_hold = int(len(qids) * cfg.holdout_fraction)
    hold_q, train_q = qids[:n_hold], qids[n_hold:]

    def responses(q: int) -> int:
        return len(by_q[train_q[q]])

    # the step count is planned from one fixed shuffle; packing whole questions, an epoch may differ by a batch
    order = list(range(len(train_q)))
    random.Random(0).shuffle(order)
    steps_per_epoch = sum(1 for _ in pack(order, cfg.batch_size, responses))
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    learner = Learner(rm, torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=0.0), cfg.max_grad_norm)
    cursor = DataCursor(len(train_q), seed)
    loop = TrainLoop(
        stage=stage,
        kind=f"reward_model/{cfg.kind}",
        total_steps=total,
        callbacks=callbacks,
        config=cfg,
        learners={"reward_model": learner},
        state_dir=state_dir,
        cursor=cursor,
        log_every=10,
    )

    def step(i: int) -> dict[str, float]:
        questions = cursor.next_batch(cfg.batch_size, responses)
        # split by question, so every (agreeing, disagreeing) pair of the batch stays inside one micro-batch
        micro = [
            [j for q in part for j in by_q[train_q[q]]]
            for part in split_evenly(questions, cfg.gradient_accumulation_steps)
        ]
        totals = (sum(len(m) for m in micro), sum(_pair_count(labels, m) for m in micro))
        learner.set_lr(cosine_lr(i, total, max(1, total // 20), cfg.lr))
        stats, grad_norm = learner.step(
            micro, lambda idx: _rm_loss(scorer, enc, labels, idx, totals, cfg, tokenizer.pad_token_id, device)
        )
        return {**stats, "grad_norm": grad_norm}

    rm.train()
    result = loop.run(step)
    rm.eval()
    summary = evaluate_reward_model(
        scorer, enc, labels, [i for q in hold_q for i in by_q[q]], tokenizer.pad_token_id
    )
    summary.update(
        steps=result.steps,
        train_questions=len(train_q),
        holdout_questions=len(hold_q),
        resumed_from=result.resumed_from,
        seconds=round(result.seconds, 2),
    )
    callbacks.metrics(stage, total, {f"holdout_{k}": v for k, v in summary.items() if isinstance(v, float)})
    return summary


def _pair_count(labels: Sequence[Label], idx: list[int]) -> int:
    """(agreeing, disagreeing) pairs of responses to the same question among ``idx``."""
    pos: dict[str, int] = defaultdict(int)
    neg: dict[str, int] = defaultdict(int)
    for i in idx:
        (pos if labels[i].label else neg)[labels[i].question_id] += 1
    return sum(pos[q] * neg[q] for q in pos)


def _rm_loss(
    scorer: RewardScorer,
    enc: list[Encoded],
    labels: Sequence[Label],
    idx: list[int],
    totals: tuple[int, int],
    cfg: RewardModelConfig,
    pad_id: int,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of the micro-batch ``idx`` and its metrics, as its share of a batch of ``totals`` (responses,
    pairs): BCE weighted by its responses, Bradley-Terry by its pairs, so the shares add up to the batch's."""
    ids, mask, completion = _pad_left([enc[i] for i in idx], pad_id, device)
    y = torch.tensor([float(labels[i].label) for i in idx], device=device)  # (B,)
    groups = torch.tensor([hash(labels[i].question_id) % (2**62) for i in idx], device=device)  # (B,)
    s = scorer(ids, mask, completion)
    bce = F.binary_cross_entropy_with_logits(s, y)
    bt, n_pairs = bradley_terry_loss(s, y, groups)
    w_bce = len(idx) / totals[0]
    bce, bt = bce * w_bce, bt * (n_pairs / totals[1] if totals[1] else 1.0)
    loss = {"bce": bce, "bradley_terry": bt, "both": bce + bt}[cfg.loss]
    acc = float(((s > 0).float() == y).float().mean()) * w_bce
    return loss, {
        "loss": loss.item(),
        "bce": bce.item(),
        "bt": bt.item(),
        "pairs": float(n_pairs),
        "accuracy": acc,
    }


@torch.no_grad()
def evaluate_reward_model(
    scorer: RewardScorer,
    enc: list[Encoded],
    labels: Sequence[Label],
    idx: list[int],
    pad_id: int,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Pointwise accuracy (logit > 0 vs label) and pairwise accuracy (r+ > r- within a question) on ``idx``."""
    if not idx:
        return {"accuracy": None, "pairwise_accuracy": None, "n": 0}
    device = next(scorer.rm.parameters()).device
    scores: list[float] = []
    for i in range(0, len(idx), batch_size):
        chunk = idx[i : i + batch_size]
        scores.extend(scorer(*_pad_left([enc[j] for j in chunk], pad_id, device)).tolist())
    ys = [labels[j].label for j in idx]
    acc = sum((s > 0) == bool(y) for s, y in zip(scores, ys, strict=True)) / len(idx)
    by_q: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for j, s in zip(idx, scores, strict=True):
        by_q[labels[j].question_id].append((s, labels[j].label))
    wins = pairs = 0
    for rows in by_q.values():
        for sp, yp in rows:
            for sn, yn in rows:
                if yp == 1 and yn == 0:
                    pairs += 1
                    wins += sp > sn
    return {"accuracy": acc, "pairwise_accuracy": wins / pairs if pairs else None, "n": len(idx)}


@torch.no_grad()
def score_responses(
    rm: PreTrainedModel | RewardScorer,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 256,
) -> list[float]:
    """Reward in (0, 1): sigmoid of the score of each (prompt, completion); ``rm`` is a scalar-head model or a
    :class:`RewardScorer`."""
    scorer = rm if isinstance(rm, RewardScorer) else RewardScorer(rm)
    was_training = scorer.rm.training
    scorer.rm.eval()
    device = next(scorer.rm.parameters()).device
    enc = encode_pairs(tokenizer, list(prompts), list(completions), max_length=max_length, add_eos=False)
    out: list[float] = []
    for i in range(0, len(enc), batch_size):
        batch = _pad_left(enc[i : i + batch_size], tokenizer.pad_token_id, device)
        out.extend(torch.sigmoid(scorer(*batch)).tolist())
    scorer.rm.train(was_training)
    return out


def save_reward_model(
    rm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike[str],
    cfg: RewardModelConfig,
) -> Path:
    """Save ``rm`` in HF format plus ``twofold_reward.json`` (kind, beta, max_length) describing how it scores."""
    from twofold.core.models import save_hf

    out = save_hf(rm, tokenizer, out_dir)
    meta = {"kind": cfg.kind, "beta": cfg.beta, "max_length": cfg.max_length, "reference": "sft"}
    if cfg.kind == "scalar":
        meta.pop("reference")
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


def reward_model_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``twofold_reward.json`` of a saved reward model (a plain scalar-head model when it has none)."""
    p = Path(path, META_FILE)
    return json.loads(p.read_text()) if p.exists() else {"kind": "scalar"}


def load_reward_scorer(
    path: str | os.PathLike[str],
    *,
    ref: PreTrainedModel | None = None,
    device: str | torch.device = "cpu",
) -> RewardScorer:
    """Load a saved reward model for scoring. An ``implicit`` one needs ``ref``, the SFT model it was trained
    against (the RL stage passes its frozen KL reference, which is that same checkpoint)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    meta = reward_model_meta(path)
    if meta["kind"] == "implicit":
        rm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    else:
        rm = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)
    # transformers types PreTrainedModel.to as an unbound wrapper, which mypy cannot call
    rm = on_device(rm, device).eval()
    return RewardScorer(
        rm,
        meta["kind"],
        ref if meta["kind"] == "implicit" else None,
        meta.get("beta", 1.0),
        meta.get("max_length"),
    )
