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
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import RewardModelConfig
from twofold.core.records import Callbacks, Cancelled, Label
from twofold.core.rl.rollout import completion_logprobs
from twofold.core.tasks import Item
from twofold.core.training import (
    Encoded,
    cosine_lr,
    encode_pairs,
    load_state,
    rng_state,
    save_state,
    set_rng_state,
)

SAVE_EVERY = 50
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


def _question_batches(
    qids: list[str], sizes: dict[str, int], batch_size: int, rng: random.Random
) -> list[list[str]]:
    order = list(qids)
    rng.shuffle(order)
    out: list[list[str]] = []
    cur: list[str] = []
    n = 0
    for q in order:
        cur.append(q)
        n += sizes[q]
        if n >= batch_size:
            out.append(cur)
            cur, n = [], 0
    if cur:
        out.append(cur)
    return out


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
    return rm.score(hidden[:, -1, :]).squeeze(-1).float()  # (B,)


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
    """Train ``rm`` in place; returns metrics incl. held-out ``accuracy`` and ``pairwise_accuracy``.

    ``cfg.kind == "implicit"``: ``rm`` is a causal LM initialised from the SFT model and ``ref`` that SFT model,
    frozen (see the module docstring); ``scalar``: ``rm`` is a ``*ForSequenceClassification`` and ``ref`` unused.
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
    sizes = {q: len(by_q[q]) for q in qids}
    steps_per_epoch = len(_question_batches(train_q, sizes, cfg.batch_size, random.Random(0)))
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(rm.parameters(), lr=cfg.lr, weight_decay=0.0)
    step = 0
    state = load_state(state_dir)
    if state is not None:
        rm.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        set_rng_state(state["rng"])
    rm.train()
    start = time.monotonic()
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        plan = _question_batches(train_q, sizes, cfg.batch_size, random.Random(f"{seed}-{epoch}"))
        batch_idx = [i for q in plan[offset] for i in by_q[q]]
        loss, metrics = _rm_loss(scorer, enc, labels, batch_idx, cfg, tokenizer.pad_token_id, device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, total, max(1, total // 20), cfg.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0 or step == total:
            callbacks.metrics(stage, step, metrics)
            callbacks.progress(stage, step, total)
        if callbacks.should_stop():  # every step: cancel must land within seconds
            raise Cancelled(stage)
        if state_dir is not None and step % SAVE_EVERY == 0 and step < total:
            save_state(
                state_dir,
                {"model": rm.state_dict(), "optimizer": opt.state_dict(), "step": step, "rng": rng_state()},
            )
    rm.eval()
    result = evaluate_reward_model(
        scorer, enc, labels, [i for q in hold_q for i in by_q[q]], tokenizer.pad_token_id
    )
    result.update(
        steps=total,
        train_questions=len(train_q),
        holdout_questions=len(hold_q),
        seconds=round(time.monotonic() - start, 2),
    )
    callbacks.metrics(stage, total, {f"holdout_{k}": v for k, v in result.items() if isinstance(v, float)})
    return result


def _rm_loss(
    scorer: RewardScorer,
    enc: list[Encoded],
    labels: Sequence[Label],
    idx: list[int],
    cfg: RewardModelConfig,
    pad_id: int,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    ids, mask, completion = _pad_left([enc[i] for i in idx], pad_id, device)
    y = torch.tensor([float(labels[i].label) for i in idx], device=device)  # (B,)
    groups = torch.tensor([hash(labels[i].question_id) % (2**62) for i in idx], device=device)  # (B,)
    s = scorer(ids, mask, completion)
    bce = F.binary_cross_entropy_with_logits(s, y)
    bt, n_pairs = bradley_terry_loss(s, y, groups)
    loss = {"bce": bce, "bradley_terry": bt, "both": bce + bt}[cfg.loss]
    acc = float(((s > 0).float() == y).float().mean())
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
    rm = rm.to(device).eval()
    return RewardScorer(
        rm,
        meta["kind"],
        ref if meta["kind"] == "implicit" else None,
        meta.get("beta", 1.0),
        meta.get("max_length"),
    )
