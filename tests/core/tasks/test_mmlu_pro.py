"""MMLU-Pro: the seeded, category-stratified 80/20 split of its 12,032 questions, and letter extraction."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from twofold.core.tasks import Item, mmlu_pro

TOTAL = 12032


@pytest.fixture(scope="module")
def raw_rows(mmlu_pro_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (mmlu_pro_dir / "test.jsonl").open(encoding="utf-8")]


@pytest.fixture(scope="module")
def split(mmlu_pro_dir: Path) -> dict[str, list[Item]]:
    return {s: mmlu_pro.load(s, path=mmlu_pro_dir) for s in ("train", "test")}


def test_split_is_disjoint_and_covers_every_question(raw_rows: list[dict], split: dict) -> None:
    assert len(raw_rows) == TOTAL
    train_ids = {it.id for it in split["train"]}
    test_ids = {it.id for it in split["test"]}
    assert len(train_ids) == len(split["train"]) and len(test_ids) == len(split["test"])  # no duplicates
    assert not train_ids & test_ids
    assert train_ids | test_ids == {f"mmlu_pro-{r['question_id']}" for r in raw_rows}
    assert len(split["train"]) + len(split["test"]) == TOTAL


def test_split_is_80_20_within_every_category(raw_rows: list[dict], split: dict) -> None:
    per_cat = Counter(r["category"] for r in raw_rows)
    assert len(per_cat) >= 10
    train_cat = Counter(it.meta["category"] for it in split["train"])
    test_cat = Counter(it.meta["category"] for it in split["test"])
    for cat, n in per_cat.items():
        assert train_cat[cat] == math.floor(n * mmlu_pro.TRAIN_FRACTION), cat
        assert test_cat[cat] == n - train_cat[cat], cat


def test_split_is_deterministic_and_seeded(mmlu_pro_dir: Path, split: dict) -> None:
    again = mmlu_pro.load("test", path=mmlu_pro_dir)
    assert [it.id for it in again] == [it.id for it in split["test"]]
    other_seed = mmlu_pro.load("test", path=mmlu_pro_dir, seed=1)
    assert {it.id for it in other_seed} != {it.id for it in split["test"]}
    assert len(other_seed) == len(split["test"])  # stratified sizes do not depend on the seed


def test_items_carry_gold_letters_and_lettered_options(raw_rows: list[dict], split: dict) -> None:
    by_id = {f"mmlu_pro-{r['question_id']}": r for r in raw_rows}
    for item in split["train"][:200] + split["test"][:200]:
        row = by_id[item.id]
        assert item.answer == row["answer"] and item.answer in mmlu_pro.LETTERS
        assert item.question.startswith(row["question"])
        last = mmlu_pro.LETTERS[len(row["options"]) - 1]
        assert f"({last}) {row['options'][-1]}" in item.question
        # the prompt asks for the phrasing the extractor reads first
        assert mmlu_pro.extract_answer(f"The answer is ({item.answer}).") == item.answer


def test_unknown_split_is_rejected(mmlu_pro_dir: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        mmlu_pro.load("validation", path=mmlu_pro_dir)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Let's think step by step. ... The answer is (C).", "C"),
        ("the answer is (c)", "C"),
        ("The answer is J.", "J"),
        ("**The answer is: (F)**", "F"),
        ("answer: **d**", "D"),
        ("The answer is **C**.", "C"),
        ("The answer is **C", "C"),
        ("The answer is Amazon, (B) is a trap", "B"),
        ("Answer: (e)", "E"),
        ("Options (A) and (G) look close, but I pick (B)", "B"),  # the last parenthesised letter
        ("B", "B"),
        ("  (H) ", "H"),
        ("I.", "I"),
        ("garbage with no choice", None),
        ("The answer is (K)", None),  # K is not an option letter
        ("The answer is a tree", None),  # an article, not option A
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert mmlu_pro.extract_answer(text) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [("C", "C", True), ("c", "C", True), (" C ", "C", True), ("D", "C", False), (None, "C", False)],
)
def test_is_correct(pred: str | None, gold: str, ok: bool) -> None:
    assert mmlu_pro.is_correct(pred, gold) is ok
