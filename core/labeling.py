"""Self-supervised pseudo-labels: agreement with the teacher's majority answer (no gold, no judge).

Rules (documented in docs/architecture.md):
- The majority is taken over a question's teacher samples whose answer could be extracted; unparseable answers
  do not vote. Ties go to the answer seen first in (temperature ascending, sample index) order, because
  lower-temperature samples are the teacher's more reliable ones.
- ``agreement`` is the majority's share of the parseable votes.
- A question is dropped when no teacher answer is parseable (so no teacher response can agree) or when
  ``agreement < min_vote_share``.
- A response (teacher or student) gets label 1 when its extracted answer equals the majority, else 0
  (an unparseable answer is 0).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twofold.core.records import Label, StudentSample, TeacherSample
from twofold.core.tasks import Item


@dataclass(frozen=True)
class Vote:
    """The teacher's majority answer for one question."""

    majority: str | None
    agreement: float  # majority votes / parseable votes (0 when none parse)
    votes: int  # parseable votes
    total: int  # all teacher samples


def majority_vote(samples: Sequence[TeacherSample]) -> Vote:
    """Majority answer over ``samples`` (one question's teacher responses), ties broken as the module says."""
    ordered = sorted(samples, key=lambda s: (s.temperature, s.index))
    answers = [s.answer for s in ordered if s.answer is not None]
    if not answers:
        return Vote(None, 0.0, 0, len(samples))
    counts = Counter(answers)
    best = max(counts.values())
    majority = next(a for a in answers if counts[a] == best)  # first seen among the tied
    return Vote(majority, best / len(answers), len(answers), len(samples))


def votes_by_question(samples: Iterable[TeacherSample]) -> dict[str, Vote]:
    """question_id -> :class:`Vote`."""
    grouped: dict[str, list[TeacherSample]] = defaultdict(list)
    for s in samples:
        grouped[s.question_id].append(s)
    return {qid: majority_vote(group) for qid, group in grouped.items()}


def kept_questions(votes: dict[str, Vote], min_vote_share: float) -> dict[str, Vote]:
    """The questions that survive: a parseable majority with at least ``min_vote_share`` of the votes."""
    return {q: v for q, v in votes.items() if v.majority is not None and v.agreement >= min_vote_share}


def agreeing_teacher_samples(
    samples: Sequence[TeacherSample], min_vote_share: float = 0.0
) -> list[TeacherSample]:
    """Teacher samples whose answer equals their question's majority (the SFT data), in a stable order."""
    kept = kept_questions(votes_by_question(samples), min_vote_share)
    out = [s for s in samples if s.question_id in kept and s.answer == kept[s.question_id].majority]
    return sorted(out, key=lambda s: (s.question_id, s.temperature, s.index))


def label_responses(
    teacher: Sequence[TeacherSample],
    student: Sequence[StudentSample],
    *,
    min_vote_share: float = 0.0,
) -> list[Label]:
    """Label every teacher and student response of the kept questions."""
    kept = kept_questions(votes_by_question(teacher), min_vote_share)
    labels: list[Label] = []
    for s in sorted(teacher, key=lambda s: (s.question_id, s.temperature, s.index)):
        vote = kept.get(s.question_id)
        if vote is None or vote.majority is None:
            continue
        labels.append(
            Label(
                s.question_id,
                "teacher",
                s.index,
                s.text,
                s.answer,
                vote.majority,
                int(s.answer == vote.majority),
                vote.agreement,
                s.temperature,
            )
        )
    for st in sorted(student, key=lambda s: (s.question_id, s.index)):
        vote = kept.get(st.question_id)
        if vote is None or vote.majority is None:
            continue
        labels.append(
            Label(
                st.question_id,
                "student",
                st.index,
                st.text,
                st.answer,
                vote.majority,
                int(st.answer == vote.majority),
                vote.agreement,
            )
        )
    return labels


def label_stats(
    labels: Sequence[Label],
    votes: dict[str, Vote],
    *,
    min_vote_share: float,
    items: Sequence[Item] = (),
    is_correct: Callable[[str | None, str | None], bool] | None = None,
    bins: int = 10,
) -> dict[str, Any]:
    """Counts, balance, agreement histogram and, where gold answers exist, accuracy against gold.

    ``accuracy_vs_gold``: share of labels equal to the gold verdict on the same response;
    ``majority_accuracy_vs_gold``: share of kept questions whose majority answer is correct.
    """
    kept = kept_questions(votes, min_vote_share)
    positive = sum(lab.label for lab in labels)
    hist = [0] * bins
    for v in kept.values():
        hist[min(int(v.agreement * bins), bins - 1)] += 1
    stats: dict[str, Any] = {
        "questions_total": len(votes),
        "questions_kept": len(kept),
        "questions_dropped": len(votes) - len(kept),
        "labels": len(labels),
        "teacher_labels": sum(1 for lab in labels if lab.source == "teacher"),
        "student_labels": sum(1 for lab in labels if lab.source == "student"),
        "positive": positive,
        "negative": len(labels) - positive,
        "positive_rate": positive / len(labels) if labels else 0.0,
        "mean_agreement": sum(v.agreement for v in kept.values()) / len(kept) if kept else 0.0,
        "agreement_histogram": [
            {"bin_start": i / bins, "bin_end": (i + 1) / bins, "count": c} for i, c in enumerate(hist)
        ],
        "accuracy_vs_gold": None,
        "majority_accuracy_vs_gold": None,
    }
    gold = {it.id: it.answer for it in items if it.answer is not None}
    if gold and is_correct is not None:
        judged = [lab for lab in labels if lab.question_id in gold]
        if judged:
            stats["accuracy_vs_gold"] = sum(
                int(is_correct(lab.answer, gold[lab.question_id])) == lab.label for lab in judged
            ) / len(judged)
        kq = [q for q in kept if q in gold]
        if kq:
            stats["majority_accuracy_vs_gold"] = sum(is_correct(kept[q].majority, gold[q]) for q in kq) / len(
                kq
            )
    return stats
