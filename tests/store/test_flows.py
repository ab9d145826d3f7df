"""The stage-run state machine (``store.flows``) on the real PostgreSQL, each test in a rolled-back transaction:
claim, heartbeat, release, finish, cancel, retry, sweep and the startup scan."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.store.test_jobs import make_job
from twofold.core.stages import STAGE_NAMES
from twofold.store import flows
from twofold.store import jobs as ops
from twofold.store.models import Event, Job, StageRun, utcnow
from twofold.store.stages import Status

pytestmark = pytest.mark.services
STALE = timedelta(seconds=30)


def _set(session: Session, stage: StageRun, status: str) -> None:
    stage.status = status
    session.flush()


def _events(session: Session, job: Job) -> list[str]:
    return list(session.scalars(select(Event.type).where(Event.job_id == job.id).order_by(Event.seq)))


def _claimed(session: Session, job: Job, position: int, worker: str = "w") -> StageRun:
    """Claim the stage at ``position`` after marking the ones before it succeeded."""
    stages = ops.stages_of(session, job.id)
    for s in stages[:position]:
        _set(session, s, "succeeded")
    row = flows.claim(session, stages[position].id, worker=worker, stale_after=STALE)
    assert row is not None
    return row


def test_claim_is_exclusive_until_the_heartbeat_goes_stale(session: Session) -> None:
    job = make_job(session)
    first = ops.stages_of(session, job.id)[0]
    claimed = flows.claim(session, first.id, worker="w1:t:1", stale_after=STALE, worker_name="w1")
    assert claimed is not None and claimed.attempt == 1 and claimed.claimed_by == "w1:t:1"
    assert session.get(Job, job.id).status == "running"  # type: ignore[union-attr]
    claim_event = session.scalars(select(Event).where(Event.type == "stage.claimed")).one()
    assert claim_event.data == {"attempt": 1, "worker": "w1"} and claim_event.stage == first.name
    assert flows.claim(session, first.id, worker="w2", stale_after=STALE) is None  # a live worker holds it
    first.heartbeat_at = utcnow() - timedelta(minutes=5)  # its worker died
    session.flush()
    again = flows.claim(session, first.id, worker="w2", stale_after=STALE)
    assert again is not None and again.attempt == 2 and again.claimed_by == "w2"


def test_a_stage_cannot_be_claimed_before_the_previous_one_succeeded(session: Session) -> None:
    job = make_job(session)
    first, second = ops.stages_of(session, job.id)[:2]
    assert flows.claim(session, second.id, worker="w", stale_after=STALE) is None
    _set(session, first, "succeeded")
    assert flows.claim(session, second.id, worker="w", stale_after=STALE) is not None
    assert flows.claim(session, uuid.uuid4(), worker="w", stale_after=STALE) is None


def test_a_stage_of_a_job_cancelled_while_queued_is_cancelled_not_run(session: Session) -> None:
    job = make_job(session)
    first = ops.stages_of(session, job.id)[0]
    job.cancel_requested = True
    session.flush()
    assert flows.claim(session, first.id, worker="w", stale_after=STALE) is None
    assert first.status == "cancelled" and job.status == "cancelled"


def test_heartbeat_writes_progress_and_reports_a_cancel_and_a_lost_claim(session: Session) -> None:
    job = make_job(session)
    row = _claimed(session, job, 0, worker="me")
    before = row.heartbeat_at
    beat = flows.touch(session, row.id, job_id=job.id, worker="me", progress=(3, 8))
    session.refresh(row)
    assert beat == flows.Beat(claim_lost=False, cancel_requested=False)
    assert (row.progress_done, row.progress_total) == (3, 8) and row.heartbeat_at >= before  # type: ignore[operator]
    flows.request_cancel(session, job)
    assert flows.touch(session, row.id, job_id=job.id, worker="me").cancel_requested
    row.claimed_by = "someone-else"  # the sweeper handed the stage to another worker
    session.flush()
    beat = flows.touch(session, row.id, job_id=job.id, worker="me", progress=(5, 8))
    session.refresh(row)
    assert beat.claim_lost and row.progress_done == 3  # nothing written for the worker that lost it


def test_release_hands_the_row_back_as_pending_only_to_its_holder(session: Session) -> None:
    job = make_job(session)
    row = _claimed(session, job, 0, worker="me")
    assert not flows.release(session, row.id, worker="not-me", reason="x")
    assert flows.release(session, row.id, worker="me", reason="runner shutting down")
    session.refresh(row)
    assert (row.status, row.claimed_by) == ("pending", None) and row.enqueued_at is not None
    assert _events(session, job)[-1] == "stage.released"
    assert flows.claim(session, row.id, worker="next", stale_after=STALE) is not None  # runs again


def test_finish_records_success_and_returns_the_next_stage_to_enqueue(session: Session) -> None:
    job = make_job(session)
    row = _claimed(session, job, 0)
    following = flows.finish(session, row.id, worker="w", status=Status.succeeded, summary={"samples": 4})
    assert following is not None and following.name == STAGE_NAMES[1] and following.enqueued_at is not None
    assert (row.status, row.metrics, row.progress_done) == ("succeeded", {"samples": 4}, 1)
    assert job.status == "running" and job.current_stage == STAGE_NAMES[1]
    assert _events(session, job)[-1] == "stage.succeeded"


def test_finishing_the_last_stage_succeeds_the_job_with_a_summary(session: Session) -> None:
    job = make_job(session)
    last = _claimed(session, job, len(STAGE_NAMES) - 1)
    assert flows.finish(session, last.id, worker="w", status=Status.succeeded, summary={"seconds": 2}) is None
    assert job.status == "succeeded" and job.finished_at is not None
    assert job.summary is not None and job.summary["stage_seconds"][STAGE_NAMES[-1]] == 2
    assert _events(session, job)[-2:] == ["stage.succeeded", "job.succeeded"]


def test_a_failure_fails_the_job_with_the_error_cut_to_its_bound(session: Session) -> None:
    job = make_job(session)
    row = _claimed(session, job, 1)
    error = "ValueError: " + "x" * 10_000
    assert flows.finish(session, row.id, worker="w", status=Status.failed, error=error) is None
    assert row.status == "failed" and row.error == error[: flows.ERROR_CHARS]
    assert (job.status, job.error_code, job.error_stage) == ("failed", "stage_failed", STAGE_NAMES[1])
    assert job.error_message == row.error
    assert _events(session, job)[-2:] == ["stage.failed", "job.failed"]


def test_an_outcome_from_a_worker_that_lost_its_claim_is_dropped(session: Session) -> None:
    job = make_job(session)
    row = _claimed(session, job, 0, worker="old")
    row.claimed_by = "new"
    session.flush()
    assert flows.finish(session, row.id, worker="old", status=Status.failed, error="boom") is None
    assert (row.status, row.error, job.status) == ("running", None, "running")
    with pytest.raises(ValueError, match="not an outcome"):
        flows.finish(session, row.id, worker="new", status=Status.pending)


def test_cancel_of_a_pending_job_cancels_every_stage_at_once(session: Session) -> None:
    job = make_job(session)
    flows.request_cancel(session, job)
    assert job.status == "cancelled" and job.finished_at is not None
    assert {s.status for s in ops.stages_of(session, job.id)} == {"cancelled"}
    assert "job.cancelled" in _events(session, job)
    with pytest.raises(flows.TransitionError, match="already cancelled"):
        flows.request_cancel(session, job)


def test_cancel_of_a_running_job_waits_for_the_stage_then_ends_cancelled(session: Session) -> None:
    job = make_job(session)
    first = _claimed(session, job, 0)
    flows.request_cancel(session, job)
    assert job.status == "running" and job.cancel_requested
    # the stage finished just as the cancel came in: nothing runs after it
    assert flows.finish(session, first.id, worker="w", status=Status.succeeded) is None
    assert job.status == "cancelled"
    assert [s.status for s in ops.stages_of(session, job.id)][1:] == ["cancelled"] * (len(STAGE_NAMES) - 1)


def test_retry_resumes_from_the_failed_stage(session: Session) -> None:
    job = make_job(session)
    second = _claimed(session, job, 1)
    with pytest.raises(flows.TransitionError, match="only failed or cancelled"):
        flows.reset_for_retry(session, job)
    flows.finish(session, second.id, worker="w", status=Status.failed, error="boom")
    assert job.status == "failed"
    resumed = flows.reset_for_retry(session, job)
    assert resumed.id == second.id and resumed.status == "pending" and resumed.error is None
    assert job.status == "running" and job.finished_at is None and job.error_code is None
    assert ops.stages_of(session, job.id)[0].status == "succeeded"


def test_sweeper_requeues_stale_running_stages_once(session: Session) -> None:
    job = make_job(session)
    first = _claimed(session, job, 0)
    assert first.id not in {s.id for s in flows.find_stale(session, stale_after=STALE, lost_after=STALE)}
    first.heartbeat_at = utcnow() - timedelta(minutes=5)
    session.flush()
    assert first.id in {s.id for s in flows.find_stale(session, stale_after=STALE, lost_after=STALE)}
    assert first.id not in {s.id for s in flows.find_stale(session, stale_after=STALE, lost_after=STALE)}


def test_sweeper_requeues_a_pending_stage_whose_message_was_lost(session: Session) -> None:
    job = make_job(session)
    first = ops.stages_of(session, job.id)[0]
    first.enqueued_at = utcnow() - timedelta(hours=1)
    session.flush()
    assert first.id in {s.id for s in flows.find_stale(session, stale_after=STALE, lost_after=STALE)}


def test_runnable_lists_each_unfinished_job_once_at_its_current_stage(session: Session) -> None:
    waiting, running, done = make_job(session), make_job(session), make_job(session)
    held = _claimed(session, running, 2)
    flows.request_cancel(session, done)
    found = {s.job_id: s.id for s in flows.runnable(session)}
    assert found[waiting.id] == ops.stages_of(session, waiting.id)[0].id
    assert found[running.id] == held.id
    assert done.id not in found
