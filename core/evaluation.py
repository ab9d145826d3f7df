"""Greedy accuracy with a 95% Wilson interval on a held-out split, with per-item results."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import ModuleType

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.models import generate_batched
from core.records import EvalResult
from core.tasks import EXTRACTION_VERSION, Item


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
    model_name: str, benchmark: str, task: ModuleType, items: Sequence[Item], texts: Sequence[str]
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
        EXTRACTION_VERSION,
        rows,
    )


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Item],
    task: ModuleType,
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
    task: ModuleType,
    *,
    model_name: str,
    benchmark: str,
) -> EvalResult:
    """Score a model reached through ``greedy(prompts) -> texts`` (the teacher's endpoint)."""
    texts = greedy([task.build_prompt(it) for it in items])
    return score_texts(model_name, benchmark, task, items, texts)
