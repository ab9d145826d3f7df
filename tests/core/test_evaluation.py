"""Evaluation: Wilson intervals against hand-computed values, and scoring of generated answers."""

from __future__ import annotations

import math

import pytest

from twofold.core.evaluation import evaluate_endpoint, evaluate_model, score_texts, wilson_interval
from twofold.core.models import build_tiny
from twofold.core.tasks import Item, gsm8k, mmlu_pro

pytestmark = pytest.mark.usefixtures("one_thread")


def hand_wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The textbook formula: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    centre, spread = p + z**2 / (2 * n), z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (centre - spread) / (1 + z**2 / n), (centre + spread) / (1 + z**2 / n)


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (8, 10, (0.4902, 0.9433)),  # the usual textbook example
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (50, 100, (0.4038, 0.5962)),
        (765, 1000, (0.7377, 0.7902)),
    ],
)
def test_wilson_interval_matches_hand_computed_values(k: int, n: int, expected: tuple[float, float]) -> None:
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=5e-5) and hi == pytest.approx(expected[1], abs=5e-5)
    assert (lo, hi) == pytest.approx(hand_wilson(k, n), abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_interval_is_symmetric_narrows_with_n_and_handles_zero() -> None:
    lo, hi = wilson_interval(3, 20)
    lo2, hi2 = wilson_interval(17, 20)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert (wilson_interval(300, 400)[1] - wilson_interval(300, 400)[0]) < (hi - lo)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_score_texts_counts_correct_answers_and_keeps_every_item() -> None:
    items = [Item("a", "?", "12"), Item("b", "?", "7"), Item("c", "?", "1,000"), Item("d", "?", "3")]
    texts = ["3*4=12. #### 12", "The answer is 8.", "#### 1000.0", "I don't know"]
    res = score_texts("sft", "gsm8k", gsm8k, items, texts)
    assert res.n == 4 and res.accuracy == 0.5
    assert res.ci95 == wilson_interval(2, 4)
    assert (
        res.extraction_version == gsm8k.extraction_version and res.model == "sft" and res.benchmark == "gsm8k"
    )
    assert [r["correct"] for r in res.items] == [True, False, True, False]
    assert [r["pred"] for r in res.items] == ["12", "8", "1000", None]
    assert res.items[1] == {"id": "b", "gold": "7", "pred": "8", "correct": False, "text": "The answer is 8."}
    summary = res.summary()
    assert "items" not in summary and summary["accuracy"] == 0.5


def test_score_texts_uses_the_tasks_rules_and_handles_an_empty_split() -> None:
    items = [Item("m1", "?", "C"), Item("m2", "?", "A")]
    res = score_texts("teacher", "mmlu_pro", mmlu_pro, items, ["The answer is (c)", "(B)"])
    assert res.accuracy == 0.5 and [r["pred"] for r in res.items] == ["C", "B"]
    empty = score_texts("rl", "gsm8k", gsm8k, [], [])
    assert empty.n == 0 and empty.accuracy == 0.0 and empty.ci95 == (0.0, 0.0)
    with pytest.raises(ValueError):
        score_texts("rl", "gsm8k", gsm8k, items, ["only one text"])


def test_evaluate_model_and_endpoint_score_one_greedy_answer_per_item() -> None:
    items = [Item(f"q{i}", f"{i}+{i}", str(2 * i)) for i in range(5)]
    model, tok = build_tiny("micro", seed=0)
    res = evaluate_model(
        model, tok, items, gsm8k, model_name="sft", benchmark="arithmetic", max_new_tokens=4, batch_size=2
    )
    assert res.n == 5 and [r["id"] for r in res.items] == [it.id for it in items]
    assert all(len(tok(r["text"], add_special_tokens=False)["input_ids"]) <= 4 for r in res.items)
    seen: list[list[str]] = []

    def greedy(prompts: list[str]) -> list[str]:
        seen.append(prompts)
        return [f"#### {2 * i if i % 2 else 0}" for i in range(len(prompts))]

    res = evaluate_endpoint(greedy, items, gsm8k, model_name="teacher", benchmark="arithmetic")
    assert seen == [[gsm8k.build_prompt(it) for it in items]]
    assert res.accuracy == pytest.approx(3 / 5)  # q0 (0), q1, q3


def rows_with(
    n: int, a_only: int, b_only: int, both: int
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Per-item rows of two models on ``n`` items: ``a_only`` right only for A, ``b_only`` only for B, ``both``
    right for both, the rest wrong for both."""
    a, b = [], []
    for i in range(n):
        a.append({"id": f"q{i}", "correct": i < a_only or a_only + b_only <= i < a_only + b_only + both})
        b.append({"id": f"q{i}", "correct": a_only <= i < a_only + b_only + both})
    return a, b


@pytest.mark.parametrize(
    ("n", "a_only", "b_only", "points", "ci95", "verdict"),
    [
        # (a_only - b_only)/n +- 1.96 sqrt(a_only + b_only - (a_only - b_only)^2/n)/n, worked by hand
        (1000, 95, 99, -0.4, [-3.13, 2.33], "within noise"),
        (1000, 98, 36, 6.2, [3.96, 8.44], "above"),
        (100, 0, 10, -10.0, [-15.88, -4.12], "below"),
        (50, 0, 0, 0.0, [0.0, 0.0], "within noise"),
        # Wald alone would say "above" ([+0.01, +0.79]); exact McNemar: 2 * 0.5^4 = 0.125
        (1000, 4, 0, 0.4, [0.01, 0.79], "within noise"),
    ],
)
def test_paired_difference_matches_hand_computed_values(
    n: int, a_only: int, b_only: int, points: float, ci95: list[float], verdict: str
) -> None:
    from twofold.core.evaluation import paired_difference

    a, b = rows_with(n, a_only, b_only, both=n // 2)
    d = paired_difference(a, b)
    assert d["points"] == pytest.approx(points) and d["ci95"] == pytest.approx(ci95, abs=0.006)
    assert (d["a_only"], d["b_only"], d["n"], d["verdict"]) == (a_only, b_only, n, verdict)
    # the same difference from unpaired accuracies: the shared right answers cancel out
    acc_a = sum(bool(r["correct"]) for r in a) / n
    acc_b = sum(bool(r["correct"]) for r in b) / n
    assert d["points"] == pytest.approx(100 * (acc_a - acc_b))


def test_paired_difference_needs_the_same_items() -> None:
    from twofold.core.evaluation import paired_difference

    a, b = rows_with(10, 1, 1, 5)
    with pytest.raises(ValueError, match="different items"):
        paired_difference(a, b[:-1])
    with pytest.raises(ValueError, match="no items"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="twice"):
        paired_difference([*a, a[0]], [*b, b[0]])


@pytest.mark.parametrize(
    ("a_only", "b_only", "p"),
    [
        (0, 0, 1.0),
        (4, 0, 0.125),  # 2 * (1/2)^4
        (1, 1, 1.0),
        (0, 10, 2 / 1024),
        (8, 2, 2 * (1 + 10 + 45) / 1024),  # 2 * P(X <= 2), X ~ Binomial(10, 1/2) = 0.109375
    ],
)
def test_exact_mcnemar_matches_hand_computed_binomial_tails(a_only: int, b_only: int, p: float) -> None:
    from twofold.core.evaluation import mcnemar_exact

    assert mcnemar_exact(a_only, b_only) == pytest.approx(p)
    assert mcnemar_exact(b_only, a_only) == pytest.approx(p)  # two-sided: symmetric
