"""The stage runner against PostgreSQL and a real teacher server, in-process: a re-delivered teacher stage
pays only for the samples not yet persisted, and a worker that lost its claim stops without writing."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update

from tests.services import free_port, pg_engine, pg_url  # noqa: F401  (fixtures)
from twofold.core.presets import preset_spec
from twofold.store import flows
from twofold.store import jobs as ops
from twofold.store.artifacts import ArtifactStore
from twofold.store.db import make_session_factory, transaction
from twofold.store.dispatch import NullDispatcher
from twofold.store.models import Event, Job, MetricPoint, StageRun, TeacherSampleRow, Tenant, utcnow
from twofold.store.settings import Settings
from twofold.workers.callbacks import DBCallbacks
from twofold.workers.runner import Runtime, StageRunner

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def teacher(teacher_server: Any) -> str:
    """A private tiny-teacher server, so that its request counters are this module's alone."""
    return str(teacher_server(None, name="tiny-teacher"))


@pytest.fixture
def rt(pg_engine, tmp_path: Path) -> Iterator[Runtime]:  # noqa: F811
    settings = Settings(
        database_url="postgresql+psycopg://unused",
        artifacts_url=str(tmp_path / "artifacts"),
        heartbeat_interval_s=0.2,
        stale_after_s=2,
    )
    yield Runtime(
        settings, make_session_factory(pg_engine), ArtifactStore(settings.artifacts_url), NullDispatcher()
    )


def _rows(teacher: str) -> int:
    return int(httpx.get(teacher.removesuffix("/v1") + "/health", timeout=10).json()["rows"])


def _job(rt: Runtime, teacher_url: str, **sections: dict[str, Any]) -> tuple[uuid.UUID, list[uuid.UUID]]:
    spec = preset_spec("smoke", teacher_base_url=teacher_url, teacher_model="tiny-teacher")
    for name, values in sections.items():
        spec[name] = {**spec[name], **values}
    with transaction(rt.session_factory) as s:
        tenant = Tenant(name=f"runner-{uuid.uuid4().hex[:8]}")
        s.add(tenant)
        s.flush()
        from twofold.core.configs import JobSpec

        job = ops.create_job(
            s,
            tenant_id=tenant.id,
            spec=JobSpec.from_dict(spec).to_dict(),
            teacher_api_key=None,
            preset=None,
            metadata={},
            dataset_id=None,
        )
        return job.id, [st.id for st in ops.stages_of(s, job.id)]


def _crash(rt: Runtime, stage_run_id: uuid.UUID) -> None:
    """Make the row look like its worker died mid-stage: running, heartbeat long ago."""
    with transaction(rt.session_factory) as s:
        s.execute(
            update(StageRun)
            .where(StageRun.id == stage_run_id)
            .values(status="running", heartbeat_at=utcnow().replace(year=2000), claimed_by="dead-worker")
        )


def test_a_redelivered_teacher_stage_requests_only_what_is_missing(rt: Runtime, teacher: str) -> None:
    job_id, stages = _job(rt, teacher, data={"train_size": 16, "test_size": 8})
    runner = StageRunner(rt, worker="test")
    before = _rows(teacher)
    assert runner.run(stages[0]) == "succeeded"
    first = _rows(teacher) - before
    with rt.session_factory() as s:
        count = s.scalar(select(func.count()).where(TeacherSampleRow.job_id == job_id))
        ids = s.scalars(select(TeacherSampleRow.id).where(TeacherSampleRow.job_id == job_id).limit(10)).all()
        assert s.get(StageRun, stages[1]).enqueued_at is not None  # the next stage was queued  # type: ignore[union-attr]
    assert count == first == 16 * 4

    # the worker "died" after persisting everything but 10 samples; its work directory is gone too
    with transaction(rt.session_factory) as s:
        s.execute(delete(TeacherSampleRow).where(TeacherSampleRow.id.in_(ids)))
    _crash(rt, stages[0])
    shutil.rmtree(rt.workdir(job_id))
    before = _rows(teacher)
    assert runner.run(stages[0]) == "succeeded"
    assert _rows(teacher) - before == 10  # only the missing ones were paid for
    with rt.session_factory() as s:
        keys = s.execute(
            select(TeacherSampleRow.question_id, TeacherSampleRow.temperature, TeacherSampleRow.index).where(
                TeacherSampleRow.job_id == job_id
            )
        ).all()
        row = s.get(StageRun, stages[0])
        assert row is not None and row.attempt == 2 and row.status == "succeeded"
    assert len(keys) == len(set(keys)) == 16 * 4
    assert runner.run(stages[0]) == "skipped"  # a duplicate message for a finished stage does nothing


def test_a_worker_that_lost_its_claim_stops_and_writes_nothing(rt: Runtime, teacher: str) -> None:
    job_id, stages = _job(rt, teacher, data={"train_size": 16, "test_size": 8}, sft={"epochs": 200.0})
    runner = StageRunner(rt, worker="slow")
    assert runner.run(stages[0]) == "succeeded"
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(runner.run(stages[1])))
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with rt.session_factory() as s:
            row = s.get(StageRun, stages[1])
            if row is not None and row.status == "running" and row.progress_done > 0:
                break
        time.sleep(0.1)
    with transaction(rt.session_factory) as s:  # the sweeper gave it to another worker meanwhile
        s.execute(update(StageRun).where(StageRun.id == stages[1]).values(claimed_by="another-worker"))
    thread.join(timeout=30)
    assert outcome == ["lost"]
    with rt.session_factory() as s:
        row = s.get(StageRun, stages[1])
        assert row is not None and (row.status, row.claimed_by, row.finished_at) == (
            "running",
            "another-worker",
            None,
        )
        assert s.get(Job, job_id).status == "running"  # type: ignore[union-attr]


def test_a_failing_stage_fails_the_job_with_a_clear_error_and_never_shows_the_key(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    secret = "sk-must-not-leak-42"
    job_id, stages = _job(rt, dead, teacher={"api_key": secret, "max_retries": 0, "timeout_s": 2.0})
    with transaction(rt.session_factory) as s:  # as the API stores it: the key in its own column
        job = s.get(Job, job_id)
        assert job is not None
        job.teacher_api_key, job.spec = (
            secret,
            {**job.spec, "teacher": {**job.spec["teacher"], "api_key": None}},
        )
    assert StageRunner(rt, worker="w").run(stages[0]) == "failed"
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        row = s.get(StageRun, stages[0])
        assert job is not None and row is not None
        assert (job.status, job.error_code, job.error_stage) == ("failed", "stage_failed", "teacher_sampling")
        assert row.status == "failed" and row.error and job.error_message == row.error
        assert {st.status for st in ops.stages_of(s, job_id)[1:]} == {"pending"}
        events = s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.seq)).all()
        assert [e.type for e in events][-2:] == ["stage.failed", "job.failed"]
        stored = " ".join(f"{e.message} {e.data}" for e in events) + (row.error or "")
    assert secret not in stored and secret not in caplog.text
    with transaction(rt.session_factory) as s:
        first = flows.reset_for_retry(s, ops.lock_job(s, job_id))
        assert first.id == stages[0]
    with rt.session_factory() as s:
        assert s.get(Job, job_id).status == "pending"  # type: ignore[union-attr]


def test_callbacks_store_text_as_its_columns_allow(rt: Runtime) -> None:
    """Answers and metric names are cut to the widths the model declares; NUL characters are replaced."""
    from twofold.core.records import TeacherSample

    job_id, stages = _job(rt, "http://127.0.0.1:9/v1")
    cb = DBCallbacks(rt, job_id=job_id, stage_run_id=stages[0], secret="sk-hidden")
    cb.teacher_samples([TeacherSample("q1", 0.7, 0, "text\x00", "4" * 500)])
    cb.metrics("rl", 1, {"m" * 300: 1.0})
    cb.event("rl", "warning", "retry", "key sk-hidden rejected\x00", {"url": "sk-hidden"})
    with rt.session_factory() as s:
        row = s.scalars(select(TeacherSampleRow).where(TeacherSampleRow.job_id == job_id)).one()
        assert (
            row.answer == "4" * TeacherSampleRow.__table__.c.answer.type.length and row.text == "text\ufffd"
        )
        name = s.scalar(select(MetricPoint.name).where(MetricPoint.job_id == job_id))
        assert name == "m" * MetricPoint.__table__.c.name.type.length
        event = s.scalars(select(Event).where(Event.job_id == job_id, Event.type == "retry")).one()
        assert (event.message, event.data) == ("key *** rejected\ufffd", {"url": "***"})
