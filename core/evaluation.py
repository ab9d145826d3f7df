"""Greedy accuracy with a 95% Wilson interval on a held-out split, with per-item results."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.models import generate_batched
from twofold.core.records import EvalResult
from twofold.core.tasks import Item, Task


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for ``correct`` successes out of ``n`` (``(0, 0)`` when ``n == 0``)."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 or 1 the bound is exactly 0 or 1; rounding would otherwise leave p just outside its interval
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return (lo, hi)


def score_texts(
    model_name: str, benchmark: str, task: Task, items: Sequence[Item], texts: Sequence[str]
) -> EvalResult:
    """Score already generated answers ``texts`` (one per item) with the task's extraction rules."""
    rows, correct = [], 0
    for item, text in zip(items, texts, strict=True):
        pred = task.extract_answer(text)
        ok = bool(task.is_correct(pred, item.answer))
        correct += ok
        rows.append({"id": item.id, "gold": item.answer, "pred": pred, "correct": ok, "text": text})
    n = len(items)
    return EvalResult(
        model_name,
        benchmark,
        correct / n if n else 0.0,
        wilson_interval(correct, n),
        n,
        task.extraction_version,
        rows,
    )


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Item],
    task: Task,
    *,
    model_name: str,
    benchmark: str,
    max_new_tokens: int,
    batch_size: int = 128,
) -> EvalResult:
    """Greedy-decode every item's prompt with a local model and score it."""
    prompts = [task.build_prompt(it) for it in items]
    texts = generate_batched(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return score_texts(model_name, benchmark, task, items, texts)


def evaluate_endpoint(
    greedy: Callable[[list[str]], list[str]],
    items: Sequence[Item],
    task: Task,
    *,
    model_name: str,
    benchmark: str,
) -> EvalResult:
    """Score a model reached through ``greedy(prompts) -> texts`` (the teacher's endpoint)."""
    texts = greedy([task.build_prompt(it) for it in items])
    return score_texts(model_name, benchmark, task, items, texts)


def paired_difference(
    a_rows: Sequence[dict[str, Any]], b_rows: Sequence[dict[str, Any]], z: float = 1.959964
) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same items (per-item rows with ``id`` and ``correct``), in points.

    The interval is the Wald interval for a difference of paired proportions: with ``a_only`` items only A got
    right and ``b_only`` only B, ``d = (a_only - b_only) / n`` and ``se = sqrt(a_only + b_only - (a_only -
    b_only)^2 / n) / n``. Pairing removes the items both got right or wrong, so it is far tighter than comparing
    two separate intervals. ``p_value`` is the exact McNemar test (two-sided binomial on the ``a_only + b_only``
    discordant items), which stays honest when few items differ. ``verdict`` is ``above`` or ``below`` when the
    interval excludes 0 and ``p_value < 0.05``, else ``within noise``.
    """
    a = {str(r["id"]): bool(r["correct"]) for r in a_rows}
    b = {str(r["id"]): bool(r["correct"]) for r in b_rows}
    if len(a) != len(a_rows) or len(b) != len(b_rows):
        raise ValueError("paired_difference: an evaluation lists an item twice")
    if set(a) != set(b):
        raise ValueError("paired_difference: the two evaluations cover different items")
    n = len(a)
    if n == 0:
        raise ValueError("paired_difference: no items")
    a_only = sum(1 for k in a if a[k] and not b[k])
    b_only = sum(1 for k in a if b[k] and not a[k])
    d = (a_only - b_only) / n
    se = math.sqrt(max(0.0, a_only + b_only - (a_only - b_only) ** 2 / n)) / n
    lo, hi = d - z * se, d + z * se
    p = mcnemar_exact(a_only, b_only)
    verdict = "within noise"
    if p < 0.05 and (lo > 0 or hi < 0):
        verdict = "above" if lo > 0 else "below"
    return {
        "points": round(100 * d, 2),
        "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
        "p_value": p,
        "a_only": a_only,
        "b_only": b_only,
        "n": n,
        "verdict": verdict,
    }


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: the chance of a split at least this uneven of ``a_only + b_only``
    discordant items if each were equally likely to go either way (1.0 when there are none)."""
    m, k = a_only + b_only, min(a_only, b_only)
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
    return min(1.0, 2 * tail)
