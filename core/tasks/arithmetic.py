"""Synthetic multi-step arithmetic word problems, generated from a seed, answered GSM8K-style.

Example: "Ana has 27 pens, gets 15, loses 3, gets 8. How many pens?" with the worked solution
"27+15=42. 42-3=39. 39+8=47. #### 47" (3 or 4 steps, operands 1-19, running totals 1-99). Train and test
problems come from disjoint seeds; a test problem whose question text also appears in the training set is
skipped, so test accuracy is never on a seen question. Extraction and scoring are GSM8K's.
"""

from __future__ import annotations

import random
from pathlib import Path

from twofold.core.tasks.base import Item, Source, check_split_and_size
from twofold.core.tasks.gsm8k import (  # noqa: F401  (GSM8K's prompt and rules)
    build_prompt,
    extract_answer,
    extraction_version,
    is_correct,
)

name = "arithmetic"
source: Source = "generated"
gold = True

NAMES = ["Ana", "Ben", "Cy", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jo", "Kim", "Lu", "Max", "Ned", "Oz", "Pam"]
THINGS = ["pens", "cards", "eggs", "coins", "books", "apples", "shells", "stamps", "marbles", "cups"]
MAX_VALUE = 99  # no running total ever exceeds this
MAX_OPERAND = 19  # operands run 1..19, so steps carry and borrow across the tens
MAX_START = 50
STEPS = (3, 4)
DEFAULT_SIZES = {"train": 2000, "test": 1000}
MAX_SIZE = 1_000_000  # far below the number of distinct problems, so generation always ends


def _problem(rng: random.Random) -> tuple[str, str, int]:
    person = rng.choice(NAMES)
    thing = rng.choice(THINGS)
    value = start = rng.randint(2, MAX_START)
    clauses, steps = [], []
    for _ in range(rng.choice(STEPS)):
        # gain while there is room under MAX_VALUE, otherwise (or at random) lose some; never below 1
        if value < 3 or (value < MAX_VALUE - MAX_OPERAND and rng.random() < 0.5):
            b = rng.randint(1, MAX_OPERAND)
            clause, new, op = f"gets {b}", value + b, "+"
        else:
            b = rng.randint(1, min(MAX_OPERAND, value - 1))
            clause, new, op = f"loses {b}", value - b, "-"
        clauses.append(clause)
        steps.append(f"{value}{op}{b}={new}.")
        value = new
    question = f"{person} has {start} {thing}, {', '.join(clauses)}. How many {thing}?"
    return question, " ".join(steps) + f" #### {value}", value


def load(split: str, *, path: str | Path | None = None, size: int = 0, seed: int = 0) -> list[Item]:
    """``size`` problems for ``split`` (0: :data:`DEFAULT_SIZES`); train and test draw from different seeds and
    never share a question. ``path`` is unused: the problems are generated."""
    check_split_and_size(name, split, size)
    if size > MAX_SIZE:
        raise ValueError(f"{name}: size must be <= {MAX_SIZE:,}, got {size:,}")
    size = size or DEFAULT_SIZES[split]
    rng = random.Random(f"arith-{split}-{seed}")
    seen: set[str] = set()
    if split == "test":
        train_rng = random.Random(f"arith-train-{seed}")
        seen = {_problem(train_rng)[0] for _ in range(max(size, 20000))}
    items: list[Item] = []
    while len(items) < size:
        q, sol, ans = _problem(rng)
        if q in seen:
            continue
        seen.add(q)
        items.append(Item(id=f"arith-{split}-{seed}-{len(items)}", question=q, answer=str(ans), solution=sol))
    return items
