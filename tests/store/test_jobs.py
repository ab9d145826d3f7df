"""Job rows on the real PostgreSQL, each test in a rolled-back transaction: a job's stage runs come from the stage
table, events count up per job, bulk writes keep one row per key, text fits its column, API keys are hashed."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from twofold.core.stages import STAGES
from twofold.store import jobs as ops
from twofold.store.keys import create_api_key, find_key, hash_key
from twofold.store.models import Event, Job, StageRun, TeacherSampleRow, Tenant

pytestmark = pytest.mark.services
SPEC = {
    "teacher": {"base_url": "http://t/v1", "model": "m"},
    "data": {"task": "arithmetic"},
    "sft": {"lr": 1.0},
}


def make_job(session: Session, spec: dict[str, object] | None = None) -> Job:
    """A pending job of a fresh tenant."""
    tenant = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
    session.add(tenant)
    session.flush()
    return ops.create_job(
        session,
        tenant_id=tenant.id,
        spec=SPEC if spec is None else spec,
        teacher_api_key=None,
        preset=None,
        metadata={},
        dataset_id=None,
    )


def test_create_job_has_one_pending_stage_run_per_table_entry_with_its_config(session: Session) -> None:
    job = make_job(session)
    stages = ops.stages_of(session, job.id)
    assert [(s.name, s.queue, s.position) for s in stages] == [
        (stage.name, stage.queue.value, i) for i, stage in enumerate(STAGES)
    ]
    assert {s.status for s in stages} == {"pending"} and job.current_stage == STAGES[0].name
    assert stages[0].queue == "io" and stages[1].queue == "gpu"
    assert stages[0].config == {"teacher": SPEC["teacher"], "data": SPEC["data"]}
    assert stages[1].config == {"sft": {"lr": 1.0}}
    assert stages[2].config == {}  # the spec has no `labels` section: nothing to store
    assert [e.seq for e in session.scalars(select(Event).where(Event.job_id == job.id))] == [1]


def test_event_numbers_count_up_within_a_job(session: Session) -> None:
    job, other = make_job(session), make_job(session)
    for i in range(3):
        ops.append_event(session, job.id, type="x", message=str(i))
    ops.append_event(session, other.id, type="x", message="other")
    session.flush()
    seqs = session.scalars(select(Event.seq).where(Event.job_id == job.id).order_by(Event.seq)).all()
    assert seqs == [1, 2, 3, 4]
    assert session.scalar(select(func.max(Event.seq)).where(Event.job_id == other.id)) == 2


def test_teacher_samples_are_written_once_per_key(session: Session) -> None:
    job = make_job(session)
    rows = [
        {"job_id": job.id, "question_id": f"q{i % 3}", "temperature": 0.7, "index": i // 3, "text": f"t{i}"}
        for i in range(9)
    ]
    ops.bulk_upsert(
        session, TeacherSampleRow, rows, conflict=("job_id", "question_id", "temperature", "index")
    )
    redelivered = [dict(r, text="second delivery") for r in rows[:5]]
    ops.bulk_upsert(
        session,
        TeacherSampleRow,
        redelivered,
        conflict=("job_id", "question_id", "temperature", "index"),
        batch_size=2,
    )
    texts = session.scalars(select(TeacherSampleRow.text).where(TeacherSampleRow.job_id == job.id)).all()
    assert sorted(texts) == sorted(f"t{i}" for i in range(9))


def test_fit_cuts_text_to_the_width_the_model_declares(session: Session) -> None:
    width = TeacherSampleRow.__table__.c.answer.type.length
    assert width == 200 and ops.fit(TeacherSampleRow.answer, "7" * 500) == "7" * width
    assert ops.fit(TeacherSampleRow.answer, "42") == "42"
    assert ops.fit(StageRun.error, "e" * 10_000) == "e" * 10_000  # Text: unbounded
    job = make_job(session)
    session.add(
        TeacherSampleRow(
            job_id=job.id,
            question_id="q",
            temperature=0.5,
            index=0,
            text="t",
            answer=ops.fit(TeacherSampleRow.answer, "9" * 500),
        )
    )
    session.flush()  # PostgreSQL would refuse a value longer than the column
    assert session.scalar(select(func.length(TeacherSampleRow.answer))) == width


def test_api_keys_are_stored_hashed_and_found_by_token(session: Session) -> None:
    row, token = create_api_key(session, tenant_name="acme")
    assert token.startswith("tf_") and len(token) > 40
    assert row.key_hash == hash_key(token) and token not in row.key_hash
    found = find_key(session, token)
    assert found is not None and found.id == row.id
    assert find_key(session, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert find_key(session, "not-a-key") is None
    _, second = create_api_key(session, tenant_name="acme")
    assert find_key(session, second).tenant_id == row.tenant_id  # type: ignore[union-attr]
