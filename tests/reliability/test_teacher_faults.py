"""Teacher faults: one job against :class:`FaultyTeacher`. It starts flaky (20% 500/429, 5% hangs past the
client timeout, 2% malformed JSON); the teacher then goes down mid-sampling for longer than the retry budget,
so the stage fails with a clear error; once the teacher is back (flaky again), ``POST /v1/jobs/{id}/retry``
resumes from that stage, pays only for the missing samples, and the job succeeds. Every injected fault shows
up as a ``teacher_retry`` event, and the job's teacher key leaks nowhere."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.reliability.conftest import RelStack, assert_complete, assert_secret_kept, rel_spec

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(600)]

DOWN_AFTER = 40  # forwarded sampling requests before the teacher dies


def _retry_kinds(events: list[dict[str, Any]]) -> Counter[str]:
    """The retry events by the fault that caused them."""
    kinds: Counter[str] = Counter()
    for e in events:
        if e["type"] != "teacher_retry":
            continue
        reason, status = e["data"]["reason"], e["data"]["status"]
        if status in (500, 429, 503):
            kinds[f"http_{status}"] += 1
        elif reason.startswith("no complete response") or "Timeout" in reason:
            kinds["timeout"] += 1
        elif "malformed" in reason or "model list" in reason:
            kinds["malformed"] += 1
        else:
            kinds[reason] += 1
    return kinds


def test_a_flaky_then_dead_teacher_costs_a_retry_not_the_job(rel: RelStack) -> None:
    ft = rel.faulty
    assert ft is not None
    spec = rel_spec(ft.url, teacher={"concurrency": 2, "timeout_s": 1.5})
    ft.mode, ft.down_after = "flaky", ft.stats()["forwarded_post"] + DOWN_AFTER
    before = ft.stats()
    started = time.monotonic()
    job_id = rel.submit(spec)

    failed = rel.finish(job_id, timeout=240)
    down_for = time.monotonic() - started
    assert ft.mode == "down"
    assert failed["status"] == "failed" and failed["error"]["stage"] == "teacher_sampling", failed["error"]
    message = failed["error"]["message"]
    budget = spec["teacher"]["max_retries"] + 1
    assert f"failed after {budget} attempt(s)" in message and "HTTP 503" in message, message
    assert message.startswith("TeacherUnavailable: teacher request POST http://127.0.0.1:")
    assert [s["status"] for s in failed["stages"]] == ["failed"] + ["pending"] * 5
    kept = rel.sql("SELECT count(*) FROM teacher_samples WHERE job_id = :j", j=job_id)[0][0]
    assert 0 < kept < spec["data"]["train_size"] * 4  # what arrived before the outage is kept

    ft.mode = "flaky"  # the teacher is back (as flaky as before)
    rows_before_retry = rel.teacher_counts()[1]
    retried = rel.post(f"/v1/jobs/{job_id}/retry")
    assert retried["status"] == "pending" and retried["error"] is None  # no stage had succeeded yet
    done = rel.finish(job_id, timeout=300)
    elapsed = time.monotonic() - started
    assert done["status"] == "succeeded", done["error"]
    assert [s["attempt"] for s in done["stages"]] == [2, 1, 1, 1, 1, 1]
    counts = assert_complete(rel, job_id, spec)
    need_rows = spec["data"]["train_size"] * 4 - kept + spec["data"]["test_size"]
    paid_rows = rel.teacher_counts()[1] - rows_before_retry

    injected = {k: ft.stats()[k] - before[k] for k in before}
    events = rel.all_pages(f"/v1/jobs/{job_id}/events")
    seen = _retry_kinds(events)
    # injected faults never reach the teacher; only a genuine client timeout (a slow answer on a busy
    # machine, retried) can make it serve a request twice, of at most n = 2 rows
    assert need_rows <= paid_rows <= need_rows + 2 * (seen["timeout"] - injected["hang"])
    assert injected["error_500"] > 0 and injected["error_429"] > 0 and injected["hang"] > 0
    assert seen["http_500"] == injected["error_500"] and seen["http_429"] == injected["error_429"]
    assert seen["malformed"] == injected["malformed"] and seen["timeout"] >= injected["hang"]
    # the outage: every 503 but the last of each request that gave up was retried
    assert injected["down"] - spec["teacher"]["concurrency"] <= seen["http_503"] <= injected["down"]
    assert not set(seen) - {"http_500", "http_429", "http_503", "timeout", "malformed"}, seen
    assert any(e["type"] == "job.retried" for e in events)
    searched = assert_secret_kept(rel, job_id)
    print(
        f"teacher faults: injected {injected}; retry events {dict(seen)}; failed after {down_for:.0f}s with "
        f"{kept} samples kept; retried run paid {paid_rows} rows for {need_rows} missing; total {elapsed:.0f}s; "
        f"{counts}; searched {searched} bytes for the key"
    )
