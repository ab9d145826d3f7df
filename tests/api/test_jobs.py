"""Jobs over HTTP: validation with field paths, redaction of the teacher key, cancel/retry, pagination,
filters, idempotency and publishing the first stage to the broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest
import redis
from sqlalchemy import select

from tests.services import REDIS_URL, require
from twofold.core.stages import STAGE_NAMES
from twofold.store.dispatch import CeleryDispatcher
from twofold.store.models import Event, Job
from twofold.store.settings import Settings

pytestmark = pytest.mark.services


def test_create_returns_the_job_with_its_stages_and_redacts_the_key(api) -> None:
    job = api.create_job(api.a, spec=api.spec(), metadata={"team": "x"})
    assert job["object"] == "job" and job["status"] == "pending" and job["preset"] is None
    assert [s["name"] for s in job["stages"]] == list(STAGE_NAMES)
    assert [s["queue"] for s in job["stages"]] == ["io", "gpu", "gpu", "gpu", "gpu", "gpu"]
    assert job["spec"]["teacher"]["api_key"] == "***"
    assert job["spec"]["rl"]["batch_size"] == 4 and job["spec"]["sft"]["epochs"] == 2.0  # resolved defaults
    assert job["metadata"] == {"team": "x"} and job["dataset"] == "arithmetic" and job["progress"] == 0.0
    fetched = api.client.get(f"/v1/jobs/{job['id']}", headers=api.a)
    assert (
        "sk-very-secret" not in fetched.text
        and "sk-very-secret" not in api.client.get("/v1/jobs", headers=api.a).text
    )
    with api.db() as s:
        row = s.get(Job, uuid.UUID(job["id"]))
        assert row.teacher_api_key == "sk-very-secret"
        assert "sk-very-secret" not in json.dumps(row.spec)
        events = s.scalars(select(Event.message).where(Event.job_id == row.id)).all()
        assert events and not any("sk-very-secret" in m for m in events)


def test_a_preset_job_uses_the_configured_teacher(api) -> None:
    job = api.create_job(api.a, preset="smoke")
    assert job["preset"] == "smoke"
    assert job["spec"]["teacher"]["base_url"] == api.settings.teacher_base_url
    assert job["spec"]["teacher"]["model"] == api.settings.teacher_model
    presets = api.client.get("/v1/presets", headers=api.a).json()["data"]
    assert {p["id"] for p in presets} == {"smoke", "demo"} and all(p["description"] for p in presets)


def _spec(**sections: object) -> Callable[[object], dict[str, object]]:
    return lambda api: {"spec": api.spec(**sections)}  # type: ignore[attr-defined]


def _raw(body: dict[str, object]) -> Callable[[object], dict[str, object]]:
    return lambda api: body


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (_raw({"spec": {"student": {"preset": "micro"}}}), "teacher"),
        (
            _raw(
                {"spec": {"teacher": {"base_url": "ftp://x", "model": "m"}, "student": {"preset": "micro"}}}
            ),
            "teacher.base_url",
        ),
        (_raw({"spec": 5}), "spec"),
        (_spec(rl={"batch_size": 6, "samples_per_prompt": 4}), "rl.batch_size"),
        (_spec(sft={"lr": -1}), "sft.lr"),
        (_spec(sft={"bogus": 1}), "sft.bogus"),
        (_spec(rl={"algo": "dpo"}), "rl.algo"),
        (_spec(data={"path": "/etc"}), "data.path"),
        (_spec(student={"preset": None, "path": "../../etc"}), "student.path"),
        (_raw({"preset": "smoke", "spec": {}}), "spec"),
        (_raw({}), "spec"),
        (_raw({"preset": "huge"}), "preset"),
        (_raw({"preset": "smoke", "surprise": 1}), "surprise"),
        (_raw({"preset": "smoke", "metadata": {"k": 5}}), "metadata.k"),
    ],
)
def test_invalid_jobs_are_refused_with_the_field_path(
    api, make: Callable[[object], dict[str, object]], param: str
) -> None:
    r = api.client.post("/v1/jobs", headers=api.a, json=make(api))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert r.json()["error"]["param"] == param, r.json()
    assert api.client.get("/v1/jobs", headers=api.a).json()["data"] == []  # nothing stored


def test_gold_reward_is_accepted_only_where_gold_answers_exist(api) -> None:
    api.create_job(api.a, spec=api.spec(rl={"reward": "gold"}))  # arithmetic has gold answers
    dataset = api.upload(api.a, b'{"question": "q1"}\n{"question": "q2"}\n').json()
    assert dataset["has_answers"] is False
    r = api.client.post(
        "/v1/jobs", headers=api.a, json={"spec": api.spec(rl={"reward": "gold"}), "dataset": dataset["id"]}
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "rl.reward"


def test_cancel_then_retry(api) -> None:
    job = api.create_job(api.a)
    assert api.client.post(f"/v1/jobs/{job['id']}/retry", headers=api.a).status_code == 409  # not finished
    r = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.a)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["cancel_requested"]
    assert {s["status"] for s in r.json()["stages"]} == {"cancelled"}
    again = api.client.post(f"/v1/jobs/{job['id']}/cancel", headers=api.a)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    retried = api.client.post(f"/v1/jobs/{job['id']}/retry", headers=api.a).json()
    assert (
        retried["status"] == "pending" and not retried["cancel_requested"] and retried["finished_at"] is None
    )
    assert {s["status"] for s in retried["stages"]} == {"pending"}
    types = [e["type"] for e in api.client.get(f"/v1/jobs/{job['id']}/events", headers=api.a).json()["data"]]
    assert types == ["job.created", "job.cancel_requested", "job.cancelled", "job.retried"]


def test_pagination_newest_first_without_gaps_or_repeats(api) -> None:
    ids = [api.create_job(api.a)["id"] for _ in range(5)]
    seen, after, pages = [], None, 0
    while True:
        r = api.client.get(
            "/v1/jobs", headers=api.a, params={"limit": 2, **({"after": after} if after else {})}
        )
        body = r.json()
        assert body["object"] == "list" and len(body["data"]) <= 2
        seen += [j["id"] for j in body["data"]]
        pages += 1
        if not body["has_more"]:
            break
        after = body["data"][-1]["id"]
    assert pages == 3 and seen == ids[::-1]
    assert (
        api.client.get("/v1/jobs", headers=api.a, params={"limit": 101}).json()["error"]["param"] == "limit"
    )
    assert api.client.get("/v1/jobs", headers=api.a, params={"limit": 0}).status_code == 422
    other = api.create_job(api.b)["id"]
    bad = api.client.get("/v1/jobs", headers=api.a, params={"after": other})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"


def test_filters_by_status_and_metadata(api) -> None:
    keep = api.create_job(api.a, preset="smoke", metadata={"team": "blue", "run": "1"})["id"]
    api.create_job(api.a, preset="smoke", metadata={"team": "red"})
    cancelled = api.create_job(api.a, preset="smoke", metadata={"team": "blue"})["id"]
    api.client.post(f"/v1/jobs/{cancelled}/cancel", headers=api.a)

    def ids(**params: str) -> list[str]:
        r = api.client.get("/v1/jobs", headers=api.a, params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["data"]]

    assert ids(**{"metadata[team]": "blue"}) == [cancelled, keep]
    assert ids(**{"metadata[team]": "blue", "status": "pending"}) == [keep]
    assert ids(**{"metadata[team]": "blue", "metadata[run]": "1"}) == [keep]
    assert ids(status="cancelled") == [cancelled]
    assert ids(**{"metadata[team]": "green"}) == []
    assert api.client.get("/v1/jobs", headers=api.a, params={"status": "exploded"}).status_code == 422
    assert api.client.get("/v1/jobs", headers=api.a, params={"metadata": "x"}).status_code == 422


def test_idempotency_key_returns_the_first_job(api) -> None:
    headers = {**api.a, "Idempotency-Key": "abc-123"}
    first = api.client.post("/v1/jobs", headers=headers, json={"preset": "smoke"})
    second = api.client.post("/v1/jobs", headers=headers, json={"preset": "smoke"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"] and second.headers["Idempotent-Replayed"] == "true"
    assert len(api.client.get("/v1/jobs", headers=api.a).json()["data"]) == 1
    conflict = api.client.post("/v1/jobs", headers=headers, json={"preset": "demo"})
    assert conflict.status_code == 409 and conflict.json()["error"]["param"] == "Idempotency-Key"
    # the same key is independent per tenant and per route
    other = api.client.post(
        "/v1/jobs", headers={**api.b, "Idempotency-Key": "abc-123"}, json={"preset": "smoke"}
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    fresh = api.client.post("/v1/jobs", headers={**api.a, "Idempotency-Key": "new"}, json={"preset": "smoke"})
    assert fresh.json()["id"] != first.json()["id"]
    cancel = [api.client.post(f"/v1/jobs/{fresh.json()['id']}/cancel", headers=headers) for _ in range(2)]
    assert [c.status_code for c in cancel] == [200, 200]  # the replay, not a 409


def test_create_publishes_the_first_stage_to_its_queue(make_api: Callable[..., object]) -> None:
    require("redis")
    prefix = f"tf-test-{uuid.uuid4().hex[:8]}:"
    settings = Settings(broker_url=REDIS_URL, broker_key_prefix=prefix)
    dispatcher = CeleryDispatcher(settings.broker_url, transport_options=settings.broker_transport_options)
    api = make_api(dispatcher=dispatcher)
    r = redis.Redis.from_url(REDIS_URL)
    try:
        job = api.create_job(api.a)  # type: ignore[attr-defined]
        raw = r.lrange(f"{prefix}io", 0, -1)
        assert len(raw) == 1
        message = json.loads(raw[0])
        assert message["headers"]["task"] == "twofold.stage.teacher_sampling"
        assert message["headers"]["argsrepr"] == repr([job["stages"][0]["id"]])
        assert api.client.get("/readyz").json() == {"database": "ok", "broker": "ok"}  # type: ignore[attr-defined]
    finally:
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)


def test_input_the_database_cannot_hold_is_refused_not_a_500(api) -> None:
    r = api.client.post(
        "/v1/jobs",
        headers={**api.a, "Content-Type": "application/json"},
        content=json.dumps({"spec": api.spec(rl={"reward_scale": float("nan")})}).encode(),
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "rl.reward_scale"
    bad_key = api.client.post("/v1/jobs", headers=api.a, json={"preset": "smoke", "metadata": {"a b": "x"}})
    assert bad_key.status_code == 422
    nul_value = api.client.post(
        "/v1/jobs", headers=api.a, json={"preset": "smoke", "metadata": {"k": "a\x00b"}}
    )
    assert nul_value.status_code == 422
    job = api.create_job(api.a)
    for path, params in [
        (f"/v1/jobs/{job['id']}/samples", {"question_id": "q\x00"}),
        (f"/v1/jobs/{job['id']}/metrics", {"stage": "s\x00"}),
        ("/v1/jobs", {"metadata[team]": "x\x00"}),
        ("/v1/jobs", {"after": "x\x00"}),
    ]:
        r = api.client.get(path, headers=api.a, params=params)
        assert r.status_code in (400, 422), (path, r.text)
