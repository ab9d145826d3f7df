"""GSM8K extraction rules, checked on every real gold solution and on hand-written model outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twofold.core.tasks import Item, gsm8k


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gold_solution_extracts_to_its_own_answer(gsm8k_dir: Path, split: str) -> None:
    items = gsm8k.load(split, path=gsm8k_dir)
    raw = [json.loads(line)["answer"] for line in (gsm8k_dir / f"{split}.jsonl").open(encoding="utf-8")]
    assert len(items) == len(raw) > 1000
    for item, solution in zip(items, raw, strict=True):
        after_hash = solution.split("####")[-1].strip()
        assert item.answer == gsm8k.normalize_number(after_hash), item.id
        assert item.answer is not None and "," not in item.answer, item.id
        # the raw gold text and the cleaned solution the teacher trains on both score as correct
        assert gsm8k.is_correct(gsm8k.extract_answer(solution), item.answer), item.id
        assert gsm8k.is_correct(gsm8k.extract_answer(item.solution or ""), item.answer), item.id
        assert "<<" not in (item.solution or ""), item.id


def test_load_names_the_missing_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        gsm8k.load("test", path=tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is $1,234.", "1234"),
        ("She pays $1,234.50 in total. #### 1,234.50", "1234.5"),
        ("#### 18.0", "18"),
        ("#### 18.00", "18"),
        ("The answer is 18.", "18"),
        ("The final answer is: 42", "42"),
        ("#### -7", "-7"),
        ("The answer is -3.50", "-3.5"),
        ("The temperature fell to -5 degrees", "-5"),
        ("He has 5 apples and buys 7 more, so 12", "12"),  # last-number fallback
        ("7+5=12. 12-3=9.", "9"),
        ("It costs $.50", "0.5"),
        ("#### 5 and later #### 6", "5"),  # the first #### wins
        ("First 3 then 4. The answer is 10. Check: 2 + 8", "10"),  # "The answer is" beats the last number
        ("no numbers at all", None),
        ("", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert gsm8k.extract_answer(text) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [
        ("18.0", "18", True),
        ("18", "18.00", True),
        ("$1,234", "1234", True),
        ("-7", "7", False),
        ("0.5", ".5", True),
        ("18.5", "18", False),
        (None, "18", False),
        ("18", None, False),
        ("eighteen", "18", False),
    ],
)
def test_is_correct_compares_normalised_numbers(pred: str | None, gold: str | None, ok: bool) -> None:
    assert gsm8k.is_correct(pred, gold) is ok


def test_prompt_contains_the_question() -> None:
    item = Item(id="x", question="How many legs do 3 cats have?", answer="12")
    prompt = gsm8k.build_prompt(item)
    assert item.question in prompt and prompt.rstrip().endswith("A:")
