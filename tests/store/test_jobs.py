"""Job and stage-run operations on the real PostgreSQL, each test in a rolled-back transaction."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from twofold.store import jobs as ops
from twofold.store.keys import create_api_key, find_key, hash_key
from twofold.store.models import Event, Job, StageRun, TeacherSampleRow, Tenant, utcnow
from twofold.store.stages import STAGES

pytestmark = pytest.mark.services
SPEC = {
    "teacher": {"base_url": "http://t/v1", "model": "m"},
    "data": {"task": "arithmetic"},
    "sft": {"lr": 1.0},
}
STALE = timedelta(seconds=30)


def _job(session: Session) -> Job:
    tenant = Tenant(name=f"t-{uuid.uuid4().hex[:8]}")
    session.add(tenant)
    session.flush()
    return ops.create_job(
        session,
        tenant_id=tenant.id,
        spec=SPEC,
        teacher_api_key=None,
        preset=None,
        metadata={},
        dataset_id=None,
    )


def _finish(session: Session, stage: StageRun, status: str = "succeeded") -> None:
    stage.status = status
    session.flush()


def test_create_job_has_one_pending_stage_per_stage_with_its_config(session: Session) -> None:
    job = _job(session)
    stages = ops.stages_of(session, job.id)
    assert [s.name for s in stages] == list(STAGES)
    assert {s.status for s in stages} == {"pending"}
    assert stages[0].queue == "io" and stages[1].queue == "gpu"
    assert stages[0].config == {"teacher": SPEC["teacher"], "data": SPEC["data"]}
    assert stages[1].config == {"sft": {"lr": 1.0}}
    assert [e.seq for e in session.scalars(select(Event).where(Event.job_id == job.id))] == [1]


def test_event_numbers_count_up_within_a_job(session: Session) -> None:
    job, other = _job(session), _job(session)
    for i in range(3):
        ops.append_event(session, job.id, type="x", message=str(i))
    ops.append_event(session, other.id, type="x", message="other")
    session.flush()
    seqs = session.scalars(select(Event.seq).where(Event.job_id == job.id).order_by(Event.seq)).all()
    assert seqs == [1, 2, 3, 4]
    assert session.scalar(select(func.max(Event.seq)).where(Event.job_id == other.id)) == 2


def test_claim_is_exclusive_until_the_heartbeat_goes_stale(session: Session) -> None:
    job = _job(session)
    first = ops.stages_of(session, job.id)[0]
    claimed = ops.claim_stage(session, first.id, worker="w1", stale_after=STALE)
    assert claimed is not None and claimed.attempt == 1 and claimed.claimed_by == "w1"
    assert session.get(Job, job.id).status == "running"  # type: ignore[union-attr]
    assert ops.claim_stage(session, first.id, worker="w2", stale_after=STALE) is None  # live worker holds it
    first.heartbeat_at = utcnow() - timedelta(minutes=5)  # its worker died
    session.flush()
    again = ops.claim_stage(session, first.id, worker="w2", stale_after=STALE)
    assert again is not None and again.attempt == 2 and again.claimed_by == "w2"


def test_a_stage_cannot_be_claimed_before_the_previous_one_succeeded(session: Session) -> None:
    job = _job(session)
    first, second = ops.stages_of(session, job.id)[:2]
    assert ops.claim_stage(session, second.id, worker="w", stale_after=STALE) is None
    _finish(session, first)
    assert ops.claim_stage(session, second.id, worker="w", stale_after=STALE) is not None
    assert ops.claim_stage(session, uuid.uuid4(), worker="w", stale_after=STALE) is None


def test_cancel_of_a_pending_job_cancels_every_stage_at_once(session: Session) -> None:
    job = _job(session)
    ops.request_cancel(session, job)
    assert job.status == "cancelled" and job.finished_at is not None
    assert {s.status for s in ops.stages_of(session, job.id)} == {"cancelled"}
    assert "job.cancelled" in session.scalars(select(Event.type).where(Event.job_id == job.id)).all()
    with pytest.raises(ops.TransitionError, match="already cancelled"):
        ops.request_cancel(session, job)


def test_cancel_of_a_running_job_waits_for_the_stage_then_ends_cancelled(session: Session) -> None:
    job = _job(session)
    first = ops.stages_of(session, job.id)[0]
    ops.claim_stage(session, first.id, worker="w", stale_after=STALE)
    ops.request_cancel(session, job)
    assert job.status == "running" and job.cancel_requested
    _finish(session, first, "succeeded")  # the stage finished just as the cancel came in
    ops.sync_job_status(session, job)
    assert job.status == "cancelled"
    assert [s.status for s in ops.stages_of(session, job.id)][1:] == ["cancelled"] * 5


def test_retry_resumes_from_the_failed_stage(session: Session) -> None:
    job = _job(session)
    first, second = ops.stages_of(session, job.id)[:2]
    _finish(session, first)
    ops.claim_stage(session, second.id, worker="w", stale_after=STALE)
    with pytest.raises(ops.TransitionError, match="only failed or cancelled"):
        ops.reset_for_retry(session, job)
    _finish(session, second, "failed")
    ops.sync_job_status(session, job)
    assert job.status == "failed"
    resumed = ops.reset_for_retry(session, job)
    assert resumed.id == second.id and resumed.status == "pending"
    assert job.status == "running" and job.finished_at is None
    assert ops.stages_of(session, job.id)[0].status == "succeeded"


def test_sweeper_requeues_stale_running_stages_once(session: Session) -> None:
    job = _job(session)
    first = ops.stages_of(session, job.id)[0]
    ops.claim_stage(session, first.id, worker="w", stale_after=STALE)
    assert first.id not in {s.id for s in ops.find_stale(session, stale_after=STALE, lost_after=STALE)}
    first.heartbeat_at = utcnow() - timedelta(minutes=5)
    session.flush()
    assert first.id in {s.id for s in ops.find_stale(session, stale_after=STALE, lost_after=STALE)}
    assert first.id not in {s.id for s in ops.find_stale(session, stale_after=STALE, lost_after=STALE)}


def test_sweeper_requeues_a_pending_stage_whose_message_was_lost(session: Session) -> None:
    job = _job(session)
    first = ops.stages_of(session, job.id)[0]
    first.enqueued_at = utcnow() - timedelta(hours=1)
    session.flush()
    assert first.id in {s.id for s in ops.find_stale(session, stale_after=STALE, lost_after=STALE)}


def test_teacher_samples_are_written_once_per_key(session: Session) -> None:
    job = _job(session)
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
