"""Synthetic multi-step arithmetic word problems, generated from a seed, answered GSM8K-style.

Example: "Ana has 7 pens, gets 5 more and gives away 3. How many pens now?"
with the worked solution "7+5=12. 12-3=9. #### 9". Train and test problems come from disjoint seeds; a test
problem whose question text also appears in the training set is skipped, so test accuracy is never on a seen
question. Extraction and scoring are GSM8K's.
"""

from __future__ import annotations

import random

from core.tasks import Item
from core.tasks.gsm8k import build_prompt, extract_answer, is_correct  # noqa: F401  (same rules)

NAMES = ["Ana", "Ben", "Cy", "Dee", "Eli", "Fay", "Gus", "Ivy", "Jo", "Kim", "Lu", "Max", "Ned", "Oz", "Pam"]
THINGS = ["pens", "cards", "eggs", "coins", "books", "apples", "shells", "stamps", "marbles", "cups"]
MAX_VALUE = 99


def _problem(rng: random.Random) -> tuple[str, str, int]:
    name = rng.choice(NAMES)
    thing = rng.choice(THINGS)
    value = start = rng.randint(2, 30)
    clauses, steps = [], []
    for _ in range(rng.choice((2, 3))):
        # add while there is room under MAX_VALUE, otherwise (or at random) give some away
        if value < 3 or (value < MAX_VALUE - 9 and rng.random() < 0.5):
            b = rng.randint(1, 9)
            clause, new, op = f"gets {b} more", value + b, "+"
        else:
            b = rng.randint(1, min(9, value - 1))
            clause, new, op = f"gives away {b}", value - b, "-"
        clauses.append(clause)
        steps.append(f"{value}{op}{b}={new}.")
        value = new
    actions = ", ".join(clauses[:-1]) + " and " + clauses[-1]
    question = f"{name} has {start} {thing}, {actions}. How many {thing} now?"
    return question, " ".join(steps) + f" #### {value}", value


def load(split: str = "train", *, size: int = 1000, seed: int = 0) -> list[Item]:
    """``size`` problems for ``split`` (train and test draw from different seeds and never share a question)."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
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
