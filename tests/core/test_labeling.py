"""Pseudo-labels: the teacher's majority answer, its tie-breaking, dropped questions, labels and statistics."""

from __future__ import annotations

import pytest

from twofold.core.labeling import (
    agreeing_teacher_samples,
    kept_questions,
    label_responses,
    label_stats,
    majority_vote,
    votes_by_question,
)
from twofold.core.records import StudentSample, TeacherSample
from twofold.core.tasks import Item, gsm8k


def t(qid: str, temperature: float, index: int, answer: str | None) -> TeacherSample:
    """A teacher sample whose text states ``answer``."""
    return TeacherSample(qid, temperature, index, f"... #### {answer}" if answer else "no idea", answer)


def s(qid: str, index: int, answer: str | None) -> StudentSample:
    """A student sample whose text states ``answer``."""
    return StudentSample(qid, index, f"#### {answer}" if answer else "???", answer)


def test_majority_and_agreement_count_only_parseable_votes() -> None:
    vote = majority_vote(
        [t("q", 0.7, 0, "5"), t("q", 0.7, 1, "5"), t("q", 1.0, 0, "6"), t("q", 1.0, 1, None)]
    )
    assert (vote.majority, vote.votes, vote.total) == ("5", 3, 4)
    assert vote.agreement == pytest.approx(2 / 3)


def test_unparseable_answers_do_not_vote() -> None:
    # three unparseable responses would outnumber "7" if they voted as one answer
    vote = majority_vote([t("q", 0.7, i, None) for i in range(3)] + [t("q", 1.0, 0, "7")])
    assert vote.majority == "7" and vote.agreement == 1.0 and vote.votes == 1


def test_ties_go_to_the_first_answer_in_temperature_then_index_order() -> None:
    # given in an order where "9" comes first, but "4" is the first at the lowest temperature
    samples = [t("q", 1.0, 0, "9"), t("q", 1.0, 1, "4"), t("q", 0.5, 1, "9"), t("q", 0.5, 0, "4")]
    assert majority_vote(samples).majority == "4"
    assert majority_vote(list(reversed(samples))).majority == "4"  # input order does not matter
    # at one temperature, the lower index wins
    assert majority_vote([t("q", 0.7, 1, "2"), t("q", 0.7, 0, "3")]).majority == "3"
    # a strict majority beats the tie-break
    assert majority_vote([t("q", 0.5, 0, "4"), t("q", 1.0, 0, "9"), t("q", 1.0, 1, "9")]).majority == "9"


def test_questions_without_a_parseable_answer_or_below_the_vote_share_are_dropped() -> None:
    teacher = [
        t("none", 0.7, 0, None),
        t("none", 1.0, 0, None),  # nothing parseable
        t("split", 0.7, 0, "1"),
        t("split", 0.7, 1, "2"),
        t("split", 1.0, 0, "3"),
        t("split", 1.0, 1, "1"),
        t("clear", 0.7, 0, "8"),
        t("clear", 0.7, 1, "8"),
        t("clear", 1.0, 0, "8"),
        t("clear", 1.0, 1, "2"),
    ]
    votes = votes_by_question(teacher)
    assert votes["none"].majority is None and votes["none"].agreement == 0.0
    assert set(kept_questions(votes, 0.0)) == {"split", "clear"}
    assert set(kept_questions(votes, 0.5)) == {"split", "clear"}  # 2/4 is kept at exactly 0.5
    assert set(kept_questions(votes, 0.6)) == {"clear"}
    assert set(kept_questions(votes, 1.0)) == set()
    labels = label_responses(teacher, [s("none", 0, "1"), s("split", 0, "1")], min_vote_share=0.6)
    assert {lab.question_id for lab in labels} == {"clear"}


def test_teacher_and_student_responses_are_labelled_against_the_majority() -> None:
    teacher = [t("a", 0.7, 0, "5"), t("a", 0.7, 1, "5"), t("a", 1.0, 0, "6"), t("a", 1.0, 1, None)]
    student = [s("a", 0, "5"), s("a", 1, "6"), s("a", 2, None), s("unknown", 0, "5")]
    labels = label_responses(teacher, student)
    by_key = {(lab.source, lab.temperature, lab.index): lab for lab in labels}
    assert len(labels) == 7  # 4 teacher + 3 student; the student sample of an unknown question is skipped
    assert by_key[("teacher", 0.7, 0)].label == 1 and by_key[("teacher", 0.7, 1)].label == 1
    assert by_key[("teacher", 1.0, 0)].label == 0
    assert by_key[("teacher", 1.0, 1)].label == 0  # unparseable is a disagreement
    assert [by_key[("student", None, i)].label for i in range(3)] == [1, 0, 0]
    assert all(lab.majority == "5" and lab.agreement == pytest.approx(2 / 3) for lab in labels)
    assert by_key[("student", None, 1)].text == "#### 6"


def test_agreeing_teacher_samples_are_the_sft_data() -> None:
    teacher = [
        t("b", 1.0, 0, "3"),
        t("a", 0.7, 1, "5"),
        t("a", 0.7, 0, "6"),
        t("a", 1.0, 0, "5"),
        t("b", 0.7, 0, "3"),
        t("c", 0.7, 0, None),
    ]
    kept = agreeing_teacher_samples(teacher)
    assert [(x.question_id, x.temperature, x.index) for x in kept] == [
        ("a", 0.7, 1),
        ("a", 1.0, 0),
        ("b", 0.7, 0),
        ("b", 1.0, 0),
    ]
    assert [x.question_id for x in agreeing_teacher_samples(teacher, min_vote_share=0.9)] == ["b", "b"]


def test_stats_count_labels_and_measure_them_against_gold() -> None:
    teacher = [
        # q1: majority 5 (right), 2 of 3
        t("q1", 0.7, 0, "5"),
        t("q1", 0.7, 1, "5"),
        t("q1", 1.0, 0, "4"),
        # q2: majority 7 (wrong, gold is 8), 2 of 2
        t("q2", 0.7, 0, "7"),
        t("q2", 1.0, 0, "7"),
        # q3: dropped, nothing parseable
        t("q3", 0.7, 0, None),
    ]
    student = [s("q1", 0, "4"), s("q2", 0, "8")]
    items = [Item("q1", "?", "5"), Item("q2", "?", "8"), Item("q3", "?", "1")]
    labels = label_responses(teacher, student)
    votes = votes_by_question(teacher)
    stats = label_stats(labels, votes, min_vote_share=0.0, items=items, is_correct=gsm8k.is_correct, bins=4)
    assert stats["questions_total"] == 3 and stats["questions_kept"] == 2 and stats["questions_dropped"] == 1
    assert (stats["labels"], stats["teacher_labels"], stats["student_labels"]) == (7, 5, 2)
    # positives: q1 teacher 0,1 and q2 teacher 0,1
    assert (stats["positive"], stats["negative"]) == (4, 3)
    assert stats["positive_rate"] == pytest.approx(4 / 7)
    assert stats["mean_agreement"] == pytest.approx((2 / 3 + 1.0) / 2)
    hist = stats["agreement_histogram"]
    assert [h["count"] for h in hist] == [0, 0, 1, 1]  # 0.67 in [0.5, 0.75), 1.0 in the last bin
    assert sum(h["count"] for h in hist) == stats["questions_kept"]
    assert hist[0]["bin_start"] == 0.0 and hist[-1]["bin_end"] == 1.0
    # Label right when it equals the gold verdict on the response:
    # q1 (gold 5): teacher 5,5 -> 1 right twice; teacher 4 -> 0 right; student 4 -> 0 right  (4 of 4)
    # q2 (gold 8): teacher 7,7 -> 1 but wrong twice; student 8 -> 0 but correct, wrong       (0 of 3)
    assert stats["accuracy_vs_gold"] == pytest.approx(4 / 7)
    assert stats["majority_accuracy_vs_gold"] == pytest.approx(1 / 2)


def test_stats_without_gold_leave_accuracy_empty() -> None:
    teacher = [t("q", 0.7, 0, "1")]
    labels = label_responses(teacher, [])
    stats = label_stats(labels, votes_by_question(teacher), min_vote_share=0.0)
    assert stats["accuracy_vs_gold"] is None and stats["majority_accuracy_vs_gold"] is None
    assert stats["labels"] == 1 and stats["positive_rate"] == 1.0
    empty = label_stats([], {}, min_vote_share=0.0)
    assert empty["labels"] == 0 and empty["positive_rate"] == 0.0 and empty["mean_agreement"] == 0.0
