"""Security against the running API server: every ``/v1`` route of the app refuses a missing or wrong key; one
tenant can neither read, cancel, retry nor download another's objects; keys are stored as hashes and checked
by hash lookup plus a constant-time comparison; crafted artifact URIs in the database cannot make a download
leave the artifact root; the per-key rate limit answers 429 with ``Retry-After``. (That a job's teacher key
never comes back out is checked after real jobs, in test_teacher_faults.py and test_worker_crashes.py.)"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import os
import tarfile
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from tests.reliability.conftest import RelStack, rel_spec
from twofold.api.main import create_app
from twofold.store import keys
from twofold.store.db import make_session_factory, transaction
from twofold.store.jobs import create_job
from twofold.store.models import Checkpoint
from twofold.store.settings import Settings

pytestmark = [pytest.mark.services]


def _key(rel: RelStack, tenant: str) -> tuple[dict[str, str], str]:
    """A new API key for ``tenant``: (auth header, token)."""
    token = rel.run("apikey", "create", "--tenant", tenant).strip().splitlines()[-1]
    return {"Authorization": f"Bearer {token}"}, token


def _tenant_of(rel: RelStack, token: str) -> uuid.UUID:
    rows = rel.sql(
        "SELECT tenant_id FROM api_keys WHERE key_hash = :h", h=hashlib.sha256(token.encode()).hexdigest()
    )
    return uuid.UUID(str(rows[0][0]))


def _db_job(rel: RelStack, token: str, checkpoint_uris: list[str]) -> tuple[str, list[str]]:
    """A failed job of ``token``'s tenant with checkpoint rows at ``checkpoint_uris``, written straight into the
    database (no worker runs it); returns (job id, checkpoint ids)."""
    assert rel.engine is not None
    with transaction(make_session_factory(rel.engine)) as s:
        job = create_job(
            s,
            tenant_id=_tenant_of(rel, token),
            spec=rel_spec("http://127.0.0.1:9/v1", teacher={"api_key": None}),
            teacher_api_key=None,
            preset=None,
            metadata={},
            dataset_id=None,
        )
        job.status = "failed"
        rows = [
            Checkpoint(
                job_id=job.id, stage="sft", kind="policy", step=i, uri=uri, size_bytes=1, sha256="0" * 64
            )
            for i, uri in enumerate(checkpoint_uris)
        ]
        s.add_all(rows)
        s.flush()
        return str(job.id), [str(r.id) for r in rows]


def _app_v1_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """(method, path) of every /v1 route the application object has, ids filled in with random UUIDs."""
    app = create_app(
        Settings(database_url=f"sqlite:///{tmp_path / 'unused.db'}", artifacts_url=str(tmp_path))
    )
    ids = {"job_id": uuid.uuid4(), "dataset_id": uuid.uuid4(), "checkpoint_id": uuid.uuid4()}
    return sorted(
        (method, route.path.format(**ids))
        for route in iter_route_contexts(app.routes)  # routes of included routers too, in FastAPI >= 0.160
        if route.path.startswith("/v1")
        for method in route.methods or ()
    )


def test_every_v1_route_of_the_app_refuses_missing_and_wrong_keys(rel: RelStack, tmp_path: Path) -> None:
    routes = _app_v1_routes(tmp_path)
    documented = {
        (m.upper(), p)
        for p, ops in httpx.get(f"{rel.api_url}/openapi.json", timeout=30).json()["paths"].items()
        if p.startswith("/v1")
        for m in ops
    }
    assert len(routes) == len(documented) >= 15  # no /v1 route is hidden from the schema
    revoked_headers, revoked = _key(rel, "security-revoked")
    rel.sql("UPDATE api_keys SET revoked_at = now() WHERE key_hash = :h", h=keys.hash_key(revoked))
    wrong = [None, "Bearer tf_" + "A" * 43, "Bearer " + revoked[:-1] + "x", revoked_headers["Authorization"]]
    wrong += ["Basic dGY6eA==", revoked]  # another scheme; the key without a scheme
    for method, path in routes:
        for header in wrong:
            r = httpx.request(
                method, rel.api_url + path, headers={"Authorization": header} if header else {}, timeout=30
            )
            assert r.status_code == 401, (method, path, header and header[:12], r.status_code)
            assert r.json()["error"]["code"] == "unauthenticated"


def test_a_tenant_cannot_touch_another_tenants_objects(rel: RelStack) -> None:
    a, token_a = _key(rel, "security-a")
    b, _ = _key(rel, "security-b")
    dataset = httpx.post(
        f"{rel.api_url}/v1/datasets",
        headers=a,
        files={"file": ("a.jsonl", b'{"question": "1+1?"}\n')},
        timeout=30,
    ).json()
    key = f"checkpoints-of-a/{uuid.uuid4().hex}"
    job_id, (ckpt_id,) = _db_job(rel, token_a, [key])
    root = Path(rel.env["TWOFOLD_ARTIFACTS_URL"])
    (root / key).mkdir(parents=True)
    (root / key / "config.json").write_text("{}")

    base = f"{rel.api_url}/v1/jobs/{job_id}"
    attempts = [
        ("GET", base),
        ("POST", f"{base}/cancel"),
        ("POST", f"{base}/retry"),
        ("GET", f"{base}/stages"),
    ]
    attempts += [("GET", f"{base}/{what}") for what in ("events", "samples", "reward-labels", "checkpoints")]
    attempts += [("GET", f"{base}/{what}") for what in ("evaluations", "metrics")]
    attempts += [("GET", f"{base}/events?stream=true"), ("GET", f"{base}/checkpoints/{ckpt_id}/download")]
    attempts += [("GET", f"{rel.api_url}/v1/datasets/{dataset['id']}")]
    for method, url in attempts:
        r = httpx.request(method, url, headers=b, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, url, r.status_code)
    r = httpx.post(
        f"{rel.api_url}/v1/jobs", headers=b, json={"preset": "smoke", "dataset": dataset["id"]}, timeout=30
    )
    assert r.status_code == 404
    listed = httpx.get(f"{rel.api_url}/v1/jobs?limit=100", headers=b, timeout=30).json()["data"]
    assert listed == []
    assert dataset["id"] not in {
        d["id"] for d in httpx.get(f"{rel.api_url}/v1/datasets", headers=b).json()["data"]
    }
    # A still sees everything, unchanged by B's attempts
    own = httpx.get(base, headers=a, timeout=30).json()
    assert own["status"] == "failed" and own["cancel_requested"] is False
    assert httpx.get(f"{base}/checkpoints/{ckpt_id}/download", headers=a, timeout=30).status_code == 200


def test_keys_are_stored_hashed_and_checked_in_constant_time(rel: RelStack) -> None:
    _, token = _key(rel, "security-hash")
    rows = rel.sql("SELECT key_hash, prefix FROM api_keys")
    assert rows and all(token not in " ".join(map(str, r)) for r in rows)
    assert (keys.hash_key(token), token[:10]) in {tuple(r) for r in rows}
    assert all(len(prefix) <= 10 for _, prefix in rows)  # a prefix identifies a key; it cannot be used as one
    # the lookup is by hash (an index probe, not a scan comparing secrets) and the final check constant-time
    source = inspect.getsource(keys.find_key)
    assert "ApiKey.key_hash == digest" in source and "hmac.compare_digest(" in source
    assert "find_key(session, token)" in inspect.getsource(
        importlib.import_module("twofold.api.deps").current_principal
    )


CRAFTED_URIS = [
    "../../../../../../etc",
    "/etc",
    "jobs/x/../../../../../etc",
    "file:///etc",
    "s3://someone-elses-bucket/models",
    "escape-link",  # a symbolic link inside the root that points at /etc
    "",
]


def test_crafted_artifact_uris_cannot_leave_the_artifact_root(rel: RelStack) -> None:
    headers, token = _key(rel, "security-paths")
    root = Path(rel.env["TWOFOLD_ARTIFACTS_URL"])
    link = root / "escape-link"
    if not link.is_symlink():
        os.symlink("/etc", link)
    mixed = root / "mixed-checkpoint"  # a real checkpoint with symbolic links planted inside it
    mixed.mkdir(exist_ok=True)
    (mixed / "config.json").write_text('{"ok": true}')
    for name, target in (("passwd", "/etc/passwd"), ("etc", "/etc")):
        if not (mixed / name).is_symlink():
            os.symlink(target, mixed / name)
    job_id, ids = _db_job(rel, token, [*CRAFTED_URIS, "mixed-checkpoint"])
    outside = Path("/etc/passwd").read_bytes()[:32]
    for uri, ckpt_id in zip(CRAFTED_URIS, ids, strict=False):
        r = httpx.get(
            f"{rel.api_url}/v1/jobs/{job_id}/checkpoints/{ckpt_id}/download", headers=headers, timeout=30
        )
        assert r.status_code == 404, (uri, r.status_code)
        assert outside not in r.content
    r = httpx.get(
        f"{rel.api_url}/v1/jobs/{job_id}/checkpoints/{ids[-1]}/download", headers=headers, timeout=30
    )
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers()]
    assert names == ["config.json"], names  # the planted links are not followed


def test_requests_are_rate_limited_per_key(rel: RelStack) -> None:
    url, token = rel.spawn_api("api-limited", rate_limit_per_minute="20")
    try:
        other, _ = _key(rel, "security-limited-other")
        mine = {"Authorization": f"Bearer {token}"}
        codes = [httpx.get(f"{url}/v1/presets", headers=mine, timeout=30).status_code for _ in range(22)]
        assert codes[:20] == [200] * 20 and codes[20:] == [429, 429], codes
        r = httpx.get(f"{url}/v1/jobs", headers=mine, timeout=30)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["Retry-After"]) <= 3  # 20/min: one token every 3 s
        assert httpx.get(f"{url}/v1/presets", headers=other, timeout=30).status_code == 200  # per key
    finally:
        rel.kill("api-limited")
