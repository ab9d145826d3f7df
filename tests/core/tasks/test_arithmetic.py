"""The procedural arithmetic task: seeded, train/test disjoint, solutions consistent with the gold answer."""

from __future__ import annotations

import re

import pytest

from twofold.core.tasks import arithmetic


def test_same_seed_gives_the_same_problems_and_another_seed_does_not() -> None:
    a = arithmetic.load("train", size=50, seed=3)
    b = arithmetic.load("train", size=50, seed=3)
    c = arithmetic.load("train", size=50, seed=4)
    assert a == b
    assert [it.question for it in a] != [it.question for it in c]


def test_train_and_test_never_share_a_question() -> None:
    train = arithmetic.load("train", size=2000, seed=0)
    test = arithmetic.load("test", size=500, seed=0)
    train_q = {it.question for it in train}
    assert not train_q & {it.question for it in test}
    assert len({it.question for it in test}) == len(test) == 500  # no repeats within a split either
    assert len({it.id for it in train} | {it.id for it in test}) == 2500


def test_solution_steps_are_right_and_end_in_the_gold_answer() -> None:
    for item in arithmetic.load("train", size=300, seed=1):
        assert item.solution is not None and item.answer is not None
        assert arithmetic.extract_answer(item.solution) == item.answer
        assert arithmetic.is_correct(arithmetic.extract_answer(item.solution), item.answer)
        steps = re.findall(r"(\d+)([+\-*])(\d+)=(\d+)\.", item.solution)
        assert steps, item.solution
        start = int(re.search(r"has (\d+)", item.question).group(1))
        value = start
        for a, op, b, result in steps:
            assert int(a) == value  # each step continues from the previous result
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert value == int(result)
        assert str(value) == item.answer
        assert 0 <= value <= arithmetic.MAX_VALUE * 3  # never negative


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        arithmetic.load("dev", size=3)
