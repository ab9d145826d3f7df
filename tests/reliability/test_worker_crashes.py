"""Worker crashes: one job whose worker is SIGKILLed (the whole process group, as a machine dies) at a seeded
random point of every one of its six stages, a new worker started after each kill. The job must succeed with
no duplicate and no missing rows, and the teacher must be paid at most 2% more than the job needs."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.reliability.conftest import RelStack, assert_complete, assert_secret_kept, rel_spec

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(600)]

STAGES = ("teacher_sampling", "sft", "labeling", "reward_model", "rl", "evaluation")
SEED = 6
CAP_S = {
    "teacher_sampling": 6.0,
    "sft": 2.5,
    "labeling": 2.0,
    "reward_model": 1.5,
    "rl": 2.5,
    "evaluation": 1.0,
}


def test_a_worker_killed_in_every_stage_costs_minutes_not_the_job(rel: RelStack) -> None:
    rel.faulty.mode = "ok"  # type: ignore[union-attr]
    rng = random.Random(SEED)
    spec = rel_spec(rel.faulty.url)  # type: ignore[union-attr]
    requests0, rows0 = rel.teacher_counts()
    started = time.monotonic()
    job_id = rel.submit(spec)
    kills: list[dict[str, Any]] = []
    for stage in STAGES:
        # the kill point: a random share of the stage's progress, or a few seconds in where the stage reports
        # progress coarsely (the caps sit below each stage's duration on two busy cores)
        share = rng.uniform(0.15, 0.85)
        rel.wait(job_id, lambda j, s=stage: rel.stage(j, s)["status"] == "running", timeout=240, poll=0.05)
        t0 = time.monotonic()
        doomed = rel.worker()
        rel.spawn_worker()  # the replacement boots while the doomed one works (nothing else is queued)
        rel.wait(
            job_id,
            lambda j, s=stage, t0=t0, share=share: (
                rel.stage(j, s)["progress"] >= share or time.monotonic() - t0 >= CAP_S[s]
            ),
            timeout=60,
            poll=0.05,
        )
        rel.kill(doomed)
        row = rel.stage(rel.get(f"/v1/jobs/{job_id}"), stage)
        assert row["status"] == "running", f"{stage} was over before the kill; lengthen it in rel_spec"
        kills.append(
            {"stage": stage, "after_s": round(time.monotonic() - t0, 2), "progress": row["progress"]}
        )
    done = rel.finish(job_id, timeout=300)
    elapsed = time.monotonic() - started
    assert done["status"] == "succeeded", done["error"]
    assert all(s["attempt"] >= 2 for s in done["stages"]), [(s["name"], s["attempt"]) for s in done["stages"]]

    counts = assert_complete(rel, job_id, spec)
    events = rel.all_pages(f"/v1/jobs/{job_id}/events")
    assert {e["stage"] for e in events if e["type"] == "stage.requeued"} == set(STAGES)
    assert_secret_kept(rel, job_id)  # six workers' logs, tracebacks of killed tasks included

    # What the job needs from the teacher: one request (n=2) per question and temperature, one greedy request
    # per test question; the same in completion rows.
    need_requests = (
        spec["data"]["train_size"] * len(spec["teacher"]["temperatures"]) + spec["data"]["test_size"]
    )
    need_rows = spec["data"]["train_size"] * 4 + spec["data"]["test_size"]
    requests1, rows1 = rel.teacher_counts()
    paid_requests, paid_rows = requests1 - requests0, rows1 - rows0
    print(
        f"worker crashes: {len(kills)} kills {kills}; job {elapsed:.0f}s; teacher requests {paid_requests}/"
        f"{need_requests} ({paid_requests / need_requests:.3f}x), rows {paid_rows}/{need_rows} "
        f"({paid_rows / need_rows:.3f}x); attempts {[s['attempt'] for s in done['stages']]}; {counts}"
    )
    assert paid_requests <= 1.02 * need_requests and paid_rows <= 1.02 * need_rows
    assert paid_requests >= need_requests and paid_rows >= need_rows
