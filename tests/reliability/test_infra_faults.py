"""Broker and database faults, in one job: the worker's PostgreSQL connections are terminated
(``pg_terminate_backend``) while it writes teacher samples, and the stack's Redis is killed and started again
(it keeps nothing on disk, so every queued and unacknowledged message is lost) during the reward model,
and kept down until that stage has finished, so the message that starts RL is lost. The sampling
stage must retry and resume with no half-written rows, and the job must still succeed."""

from __future__ import annotations

import re
import time

import pytest

from tests.reliability.conftest import WORKER_APP, RelStack, assert_complete, rel_spec

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(600)]


def _terminate_worker_connections(rel: RelStack) -> int:
    """Terminate every PostgreSQL backend of the worker processes; returns how many there were."""
    rows = rel.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :app", app=WORKER_APP
    )
    return sum(1 for (ok,) in rows if ok)


def test_database_and_broker_outages_mid_stage_cost_a_retry_not_the_job(rel: RelStack) -> None:
    assert rel.faulty is not None and rel.redis is not None
    rel.faulty.mode = "ok"
    spec = rel_spec(rel.faulty.url)
    started = time.monotonic()
    job_id = rel.submit(spec)

    def sampling_at(share: float) -> bool:
        stage = rel.stage(rel.get(f"/v1/jobs/{job_id}"), "teacher_sampling")
        return stage["status"] == "running" and stage["progress"] >= share

    rel.wait(job_id, lambda j: sampling_at(0.3), timeout=120, poll=0.05)
    terminated = 0
    deadline = time.monotonic() + 20
    while (
        rel.stage(rel.get(f"/v1/jobs/{job_id}"), "teacher_sampling")["attempt"] < 2
    ):  # until the stage retries
        assert time.monotonic() < deadline, "terminating connections never made the stage retry"
        terminated += _terminate_worker_connections(rel)
        time.sleep(0.05)
    db_fault_at = time.monotonic() - started

    # Redis dies during the reward model and stays down until that stage has finished, so the message that
    # should start RL is never published; it comes back empty.
    rel.wait(job_id, lambda j: rel.stage(j, "reward_model")["status"] == "running", timeout=240, poll=0.1)
    rel.redis.stop()
    broker_down_at = time.monotonic() - started
    rel.wait(job_id, lambda j: rel.stage(j, "reward_model")["status"] == "succeeded", timeout=120, poll=0.1)
    deadline = time.monotonic() + 60
    while not re.search(r"Task twofold\.stage\.reward_model\[\S+\] succeeded", rel.log(rel.worker())):
        assert time.monotonic() < deadline, "the reward model task never returned while Redis was down"
        time.sleep(0.1)  # the task gave up publishing RL's message
    rel.redis.start()
    broker_back_at = time.monotonic() - started
    done = rel.finish(job_id, timeout=300)
    elapsed = time.monotonic() - started
    assert done["status"] == "succeeded", done["error"]
    sampling = rel.stage(done, "teacher_sampling")
    assert sampling["attempt"] >= 2
    counts = assert_complete(rel, job_id, spec)
    events = rel.all_pages(f"/v1/jobs/{job_id}/events")
    released = [e for e in events if e["type"] == "stage.released" and e["stage"] == "teacher_sampling"]
    requeued = [e for e in events if e["type"] == "stage.requeued"]
    assert released or requeued, "the interrupted attempt was neither handed back nor requeued"
    assert any("database error" in e["message"] for e in released) or requeued
    lost = [e for e in requeued if e["stage"] == "rl" and "not picked up" in e["message"]]
    assert lost, "the RL message lost with Redis was not sent again"
    print(
        f"infra faults: {terminated} worker connections terminated at {db_fault_at:.0f}s "
        f"(sampling attempts {sampling['attempt']}, released {len(released)}, requeued {len(requeued)}); "
        f"Redis down from {broker_down_at:.0f}s (reward model running) to {broker_back_at:.0f}s, RL requeued "
        f"at {lost[0]['created_at']}; job succeeded after {elapsed:.0f}s; "
        f"attempts {[s['attempt'] for s in done['stages']]}; {counts}"
    )
