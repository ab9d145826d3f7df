"""The SDK end to end against real ``twofold serve`` processes (tests/sdk/conftest.py): a smoke job from
creation to success with live Server-Sent Events, its results, pagination, idempotency, cancel/retry, every
error class from a real response, a 503 retried until it succeeds, and the async client."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

import twofold_client as tc
from tests.sdk.servers import ApiServer, TcpRelay
from twofold.core.stages import STAGE_NAMES

pytestmark = pytest.mark.slow


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_smoke_job_runs_to_success_with_live_events(smoke: dict[str, Any]) -> None:
    job: tc.Job = smoke["job"]
    assert job.status == "succeeded", (job.error, [(s.name, s.status, s.error) for s in job.stages])
    assert job.finished and job.progress == pytest.approx(1.0) and job.finished_at is not None
    assert [s.name for s in job.stages] == list(STAGE_NAMES)
    assert all(s.status == "succeeded" for s in job.stages)
    assert job.summary, "a finished job carries a summary of scores"
    assert smoke["updates"][-1].status == "succeeded"
    live: list[tc.Event] = smoke["live"]
    seqs = [e.seq for e in live]
    assert seqs == sorted(set(seqs)) and len(seqs) >= len(STAGE_NAMES)
    assert {e.stage for e in live} >= set(STAGE_NAMES)  # every stage reported something while it ran


def test_event_stream_resumes_after_last_event_id(client: tc.Client, smoke: dict[str, Any]) -> None:
    live: list[tc.Event] = smoke["live"]
    middle = live[len(live) // 2].seq
    resumed = list(client.jobs.events(smoke["job"].id, stream=True, last_event_id=str(middle)))
    assert [e.seq for e in resumed] == [e.seq for e in live if e.seq > middle]
    listed = list(client.jobs.events(smoke["job"].id, limit=7))  # the paginated list, 7 a page
    assert [e.id for e in listed] == [e.id for e in live]


def test_wait_hands_every_event_to_on_event(client: tc.Client, smoke: dict[str, Any]) -> None:
    seen: list[tc.Event] = []
    job = client.jobs.wait(smoke["job"].id, on_event=seen.append)
    assert job.status == "succeeded" and [e.seq for e in seen] == [e.seq for e in smoke["live"]]


def test_results_of_the_finished_job(client: tc.Client, smoke: dict[str, Any], tmp_path: Path) -> None:
    job_id = smoke["job"].id
    evaluations = list(client.jobs.evaluations.list(job_id))
    assert evaluations and all(0.0 <= e.accuracy <= 1.0 for e in evaluations)
    assert {e.model for e in evaluations} >= {"sft", "rl"}
    labels = client.jobs.reward_labels.list(job_id, limit=5)
    assert isinstance(labels, tc.RewardLabelPage) and labels.summary is not None
    assert labels.summary.labels == len(list(labels)) > 5  # iterating pages through all of them
    assert sum(b.count for b in labels.summary.agreement_histogram) == labels.summary.questions_kept
    teacher = list(client.jobs.samples.list(job_id, source="teacher", limit=50))
    assert len(teacher) > 50 and all(s.source == "teacher" for s in teacher)
    one = teacher[0].question_id
    assert {s.question_id for s in client.jobs.samples.list(job_id, question_id=one)} == {one}
    assert [s.name for s in client.jobs.stages.list(job_id)] == list(STAGE_NAMES)
    assert any(m.stage == "sft" for m in client.jobs.metrics.list(job_id, stage="sft").data)
    checkpoints = list(client.jobs.checkpoints.list(job_id))
    policy = [c for c in checkpoints if c.kind == "policy"]
    assert policy and {c.kind for c in checkpoints} >= {"policy", "reward_model"}
    out = client.jobs.checkpoints.download(job_id, policy[-1].id, out_dir=tmp_path / "student")
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    presets = {p.id: p for p in client.presets.list()}
    assert set(presets) >= {"smoke", "demo"} and presets["smoke"].spec


def test_list_filters_by_status_and_metadata(client: tc.Client, smoke: dict[str, Any]) -> None:
    run = smoke["job"].metadata["run"]
    found = list(client.jobs.list(status="succeeded", metadata={"suite": "sdk", "run": run}))
    assert [j.id for j in found] == [smoke["job"].id]
    assert client.jobs.list(metadata={"run": "no-such-run"}).data == []


def test_pagination_over_more_than_two_pages(client: tc.Client) -> None:
    created = [
        client.datasets.create(file=_jsonl([{"question": f"{i} + 1 = ?", "answer": i + 1}]), name=f"page-{i}")
        for i in range(7)
    ]
    assert all(d.row_count == 1 and d.has_answers for d in created)
    page = client.datasets.list(limit=2)
    pages = list(page.iter_pages())
    walked = [d.id for d in page]
    assert len(pages) >= 4 and all(len(p.data) <= 2 for p in pages)
    assert len(walked) == len(set(walked))  # no item twice across pages
    mine = [i for i in walked if i in {d.id for d in created}]
    assert mine == [d.id for d in reversed(created)]  # newest first
    assert client.datasets.retrieve(created[0].id).name == "page-0"


def test_same_idempotency_key_returns_the_same_job(client: tc.Client) -> None:
    key = f"sdk-test-{uuid.uuid4()}"
    first = client.jobs.create(preset="smoke", metadata={"suite": "idem"}, idempotency_key=key)
    again = client.jobs.create(preset="smoke", metadata={"suite": "idem"}, idempotency_key=key)
    try:
        assert again.id == first.id
        with pytest.raises(tc.ConflictError) as info:  # the same key with another body
            client.jobs.create(preset="demo", idempotency_key=key, max_retries=0)
        assert info.value.status_code == 409 and info.value.code == "conflict"
        assert info.value.param == "Idempotency-Key"
    finally:
        client.jobs.cancel(first.id)


def test_cancel_and_retry(client: tc.Client) -> None:
    job = client.jobs.create(preset="smoke", metadata={"suite": "cancel"})
    cancelled = client.jobs.cancel(job.id)
    assert cancelled.id == job.id
    final = client.jobs.wait(job.id, poll_interval=0.5, timeout=120)
    assert final.status == "cancelled"
    retried = client.jobs.retry(job.id)
    assert retried.status in ("pending", "running")
    client.jobs.cancel(job.id)
    assert client.jobs.wait(job.id, poll_interval=0.5, timeout=120).status == "cancelled"
    with pytest.raises(tc.ConflictError):  # a finished job cannot be cancelled again
        client.jobs.cancel(job.id, max_retries=0)


def test_wait_timeout_is_a_clear_error(client: tc.Client) -> None:
    job = client.jobs.create(preset="smoke", metadata={"suite": "timeout"})
    try:
        with pytest.raises(tc.JobWaitTimeout, match="still") as info:
            client.jobs.wait(job.id, poll_interval=0.1, timeout=0.3)
        assert info.value.job.id == job.id and not info.value.job.finished
    finally:
        client.jobs.cancel(job.id)


# --- every error class from a real response ----------------------------------------------------------------------
def test_401_wrong_key(api_server: ApiServer) -> None:
    with (
        tc.Client(base_url=api_server.url, api_key="tf_wrong") as bad,
        pytest.raises(tc.AuthenticationError) as info,
    ):
        bad.jobs.list()
    assert (info.value.status_code, info.value.code) == (401, "unauthenticated")


def test_404_unknown_and_other_tenants_job(
    api_server: ApiServer, client: tc.Client, smoke: dict[str, Any]
) -> None:
    with pytest.raises(tc.NotFoundError) as info:
        client.jobs.retrieve(str(uuid.uuid4()))
    assert info.value.code == "not_found"
    with (
        tc.Client(base_url=api_server.url, api_key=api_server.other_key) as other,
        pytest.raises(tc.NotFoundError),
    ):
        other.jobs.retrieve(smoke["job"].id)


def test_422_bad_spec_and_bad_dataset_line(client: tc.Client) -> None:
    spec = {p.id: p for p in client.presets.list()}["smoke"].spec
    assert spec is not None
    spec = {**spec, "rl": {**spec["rl"], "batch_size": 0}}
    with pytest.raises(tc.UnprocessableEntityError) as info:
        client.jobs.create(spec=spec)
    assert (info.value.code, info.value.param) == ("validation_error", "rl.batch_size")
    bad = _jsonl([{"question": "1 + 1 = ?", "answer": 2}]) + b"{not json\n"
    with pytest.raises(tc.UnprocessableEntityError) as info:
        client.datasets.create(file=("bad.jsonl", bad))
    assert info.value.param is not None and info.value.param.startswith("line 2")


def test_400_bad_last_event_id(client: tc.Client, smoke: dict[str, Any]) -> None:
    with pytest.raises(tc.BadRequestError) as info:
        list(client.jobs.events(smoke["job"].id, stream=True, last_event_id="not-a-number"))
    assert (info.value.status_code, info.value.code, info.value.param) == (
        400,
        "invalid_request",
        "Last-Event-ID",
    )


def test_409_cancel_of_a_finished_job_is_raised_without_a_retry(
    api_server: ApiServer, smoke: dict[str, Any]
) -> None:
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    with (
        tc.Client(base_url=api_server.url, api_key=api_server.api_key, http_client=http, max_retries=3) as c,
        pytest.raises(tc.ConflictError) as info,
    ):
        c.jobs.cancel(smoke["job"].id)
    assert statuses == [409] and info.value.code == "conflict"  # the job stays finished: retrying is futile


def test_413_upload_over_the_limit(aux_server: ApiServer) -> None:
    with (
        tc.Client(base_url=aux_server.url, api_key=aux_server.other_key, max_retries=0) as c,
        pytest.raises(tc.PayloadTooLargeError) as info,
    ):
        c.datasets.create(file=_jsonl([{"question": "x" * 100, "answer": 1}] * 40))
    assert (info.value.status_code, info.value.code) == (413, "payload_too_large")


def test_429_rate_limited_with_retry_after(aux_server: ApiServer) -> None:
    with (
        tc.Client(base_url=aux_server.url, api_key=aux_server.api_key, max_retries=0) as c,
        pytest.raises(tc.RateLimitError) as info,
    ):
        for _ in range(10):  # 3 a minute
            c.datasets.list()
    assert (info.value.status_code, info.value.code) == (429, "rate_limited")
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_503_is_retried_until_the_broker_is_back(aux_server: ApiServer, broker_relay: TcpRelay) -> None:
    broker_relay.close()
    with (
        tc.Client(base_url=aux_server.url, api_key=aux_server.api_key, max_retries=0) as c,
        pytest.raises(tc.InternalServerError) as info,
    ):
        c.health()
    assert (info.value.status_code, info.value.code) == (
        503,
        "unavailable",
    ) and "broker" in info.value.message

    statuses: list[int] = []

    def on_response(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        if response.status_code == 503:  # the broker comes back while the client backs off
            broker_relay.open()

    http = httpx.Client(event_hooks={"response": [on_response]})
    with tc.Client(base_url=aux_server.url, api_key=aux_server.api_key, http_client=http, max_retries=3) as c:
        assert c.health() == {"database": "ok", "broker": "ok"}
    assert statuses == [503, 200]
    broker_relay.close()


# --- the async client --------------------------------------------------------------------------------------------
def test_async_client(api_server: ApiServer, smoke: dict[str, Any]) -> None:
    async def run() -> None:
        async with tc.AsyncClient(base_url=api_server.url, api_key=api_server.api_key) as client:
            job = await client.jobs.retrieve(smoke["job"].id)
            assert job.status == "succeeded"
            streamed = [e.seq async for e in client.jobs.events(job.id, stream=True)]
            assert streamed == [e.seq for e in smoke["live"]]
            first = await client.jobs.list(limit=1)
            assert len(first.data) == 1 and first.has_more
            ids = [j.id async for j in client.jobs.list(limit=2)]
            assert job.id in ids and len(ids) == len(set(ids)) >= 3
            labels = await client.jobs.reward_labels.list(job.id)
            assert labels.summary is not None and labels.summary.labels
            created = await client.datasets.create(file=_jsonl([{"question": "2 + 2 = ?"}]), name="async")
            assert (await client.datasets.retrieve(created.id)).has_answers is False
            with pytest.raises(tc.NotFoundError):
                await client.jobs.retrieve(str(uuid.uuid4()))

    asyncio.run(run())
