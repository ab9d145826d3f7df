"""Authentication on every /v1 route, tenant isolation (404 across tenants) and the per-key rate limit."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from twofold.store.artifacts import ArtifactStore
from twofold.store.models import Checkpoint

pytestmark = pytest.mark.services


def _v1_routes(api: object) -> list[tuple[str, str]]:
    """(method, path) of every /v1 operation in the OpenAPI document, with random ids filled in."""
    paths = api.client.get("/openapi.json").json()["paths"]  # type: ignore[attr-defined]
    ids = {"job_id": uuid.uuid4(), "dataset_id": uuid.uuid4(), "checkpoint_id": uuid.uuid4()}
    return [
        (method.upper(), path.format(**ids))
        for path, operations in paths.items()
        if path.startswith("/v1")
        for method in operations
    ]


@pytest.mark.parametrize(
    "header",
    [None, "Bearer tf_wrong-key", "Bearer ", "Basic dXNlcjpwYXNz", "tf_no-scheme", "Bearer " + "x" * 300],
)
def test_every_v1_route_answers_401_without_a_valid_key(api, header: str | None) -> None:
    routes = _v1_routes(api)
    assert len(routes) >= 15
    headers = {"Authorization": header} if header is not None else {}
    for method, path in routes:
        r = api.client.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["error"]["code"] == "unauthenticated"


def test_another_tenants_objects_answer_404(api, tmp_path: Path) -> None:
    job = api.create_job(api.a)
    dataset = api.upload(api.a, b'{"question": "1+1?", "answer": 2}\n').json()
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text("{}")
    key = ArtifactStore.checkpoint_key(uuid.UUID(job["id"]), "sft", "policy", 1)
    ArtifactStore(api.settings.artifacts_url).put_dir(src, key)
    with api.db() as s:
        ckpt = Checkpoint(
            job_id=uuid.UUID(job["id"]),
            stage="sft",
            kind="policy",
            step=1,
            uri=key,
            size_bytes=2,
            sha256="0" * 64,
        )
        s.add(ckpt)
        s.commit()
        cid = ckpt.id
    jid = job["id"]
    own = api.client.get(f"/v1/jobs/{jid}/checkpoints/{cid}/download", headers=api.a)
    assert own.status_code == 200 and own.headers["content-type"] == "application/gzip"
    for method, path in [
        ("GET", f"/v1/jobs/{jid}"),
        ("POST", f"/v1/jobs/{jid}/cancel"),
        ("POST", f"/v1/jobs/{jid}/retry"),
        ("GET", f"/v1/jobs/{jid}/stages"),
        ("GET", f"/v1/jobs/{jid}/events"),
        ("GET", f"/v1/jobs/{jid}/events?stream=true"),
        ("GET", f"/v1/jobs/{jid}/samples"),
        ("GET", f"/v1/jobs/{jid}/reward-labels"),
        ("GET", f"/v1/jobs/{jid}/checkpoints"),
        ("GET", f"/v1/jobs/{jid}/checkpoints/{cid}/download"),
        ("GET", f"/v1/jobs/{jid}/evaluations"),
        ("GET", f"/v1/jobs/{jid}/metrics"),
        ("GET", f"/v1/datasets/{dataset['id']}"),
    ]:
        r = api.client.request(method, path, headers=api.b)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert api.client.get("/v1/jobs", headers=api.b).json()["data"] == []
    assert dataset["id"] not in {
        d["id"] for d in api.client.get("/v1/datasets", headers=api.b).json()["data"]
    }
    r = api.client.post("/v1/jobs", headers=api.b, json={"preset": "smoke", "dataset": dataset["id"]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "dataset"
    # A's own job is untouched by B's attempts
    assert api.client.get(f"/v1/jobs/{jid}", headers=api.a).json()["status"] == "pending"


def test_unknown_and_malformed_ids_answer_404(api) -> None:
    for path in ["/v1/jobs/not-a-uuid", f"/v1/jobs/{uuid.uuid4()}", "/v1/datasets/../../etc/passwd"]:
        assert api.client.get(path, headers=api.a).status_code == 404


def test_rate_limit_answers_429_with_retry_after(make_api: Callable[..., object]) -> None:
    api = make_api(rate_limit_per_minute=3)
    codes = [api.client.get("/v1/jobs", headers=api.a).status_code for _ in range(4)]  # type: ignore[attr-defined]
    assert codes == [200, 200, 200, 429]
    r = api.client.get("/v1/jobs", headers=api.a)  # type: ignore[attr-defined]
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 20
    # the limit is per key: tenant B still gets through
    assert api.client.get("/v1/jobs", headers=api.b).status_code == 200  # type: ignore[attr-defined]
