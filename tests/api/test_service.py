"""Service routes, the one error body everywhere, the OpenAPI document, the embedded (SQLite) setup, and the
rule that the API never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.services import free_port
from twofold.api.main import create_app
from twofold.store.db import make_engine, make_session_factory
from twofold.store.dispatch import CeleryDispatcher
from twofold.store.keys import create_api_key
from twofold.store.migrate import upgrade
from twofold.store.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.services
def test_error_body_for_unknown_routes_methods_and_bad_input(api) -> None:
    cases = [
        (api.client.get("/nope"), 404, "not_found", None),
        (api.client.get("/v1/nope", headers=api.a), 404, "not_found", None),
        (api.client.put("/v1/jobs", headers=api.a), 405, "method_not_allowed", None),
        (
            api.client.post(
                "/v1/jobs", headers={**api.a, "Content-Type": "application/json"}, content=b"{not json"
            ),
            422,
            "validation_error",
            None,
        ),
        (api.client.post("/v1/jobs", headers=api.a, json=[1]), 422, "validation_error", None),
        (
            api.client.get("/v1/jobs", headers=api.a, params={"limit": "many"}),
            422,
            "validation_error",
            "limit",
        ),
    ]
    for response, status, code, param in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "param"}
        assert body["error"]["code"] == code and body["error"]["message"]
        if param is not None:
            assert body["error"]["param"] == param


@pytest.mark.services
def test_health_readiness_and_metrics(make_api) -> None:
    api = make_api(metrics_token="op-secret")
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"database": "ok", "broker": "disabled"}
    api.create_job(api.a)
    api.client.get("/v1/jobs", headers=api.a)
    text = api.client.get("/metrics", headers={"Authorization": "Bearer op-secret"}).text
    assert 'twofold_jobs{status="pending"} 1.0' in text
    assert 'twofold_http_requests_total{method="GET",route="/v1/jobs",status="200"}' in text
    assert 'twofold_stage_runs{stage="sft",status="pending"} 1.0' in text
    assert "twofold_event_streams 0.0" in text
    for wrong in ({}, {"Authorization": "Bearer op-secre"}, api.a):  # a tenant's key is not the token
        refused = api.client.get("/metrics", headers=wrong)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"


@pytest.mark.services
def test_metrics_without_a_token_show_no_tenant_figures(api) -> None:
    api.create_job(api.a)
    text = api.client.get("/metrics").text
    assert "twofold_http_requests_total" in text and "twofold_event_streams" in text
    assert "twofold_jobs" not in text and "twofold_stage_runs" not in text


@pytest.mark.services
def test_readyz_is_503_when_the_broker_is_down(make_api) -> None:
    dead = CeleryDispatcher(f"redis://127.0.0.1:{free_port()}/0")
    api = make_api(dispatcher=dead)
    r = api.client.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    assert "broker" in r.json()["error"]["message"]


@pytest.mark.services
def test_openapi_documents_every_route_with_bearer_auth(api) -> None:
    doc = api.client.get("/openapi.json").json()
    paths = set(doc["paths"])
    for path in [
        "/v1/datasets",
        "/v1/datasets/{dataset_id}",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/retry",
        "/v1/jobs/{job_id}/stages",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/samples",
        "/v1/jobs/{job_id}/reward-labels",
        "/v1/jobs/{job_id}/checkpoints",
        "/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/download",
        "/v1/jobs/{job_id}/evaluations",
        "/v1/jobs/{job_id}/metrics",
        "/v1/presets",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in paths, path
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert api.client.get("/docs").status_code == 200


def test_the_api_runs_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    factory = make_session_factory(make_engine(url))
    with factory() as s:
        _, key = create_api_key(s, tenant_name="solo")
        s.commit()
    settings = Settings(database_url=url, artifacts_url=str(tmp_path / "art"))
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        created = [
            client.post("/v1/jobs", headers=headers, json={"preset": "smoke"}).json() for _ in range(3)
        ]
        listed = client.get("/v1/jobs", headers=headers, params={"limit": 2}).json()
        assert [j["id"] for j in listed["data"]] == [created[2]["id"], created[1]["id"]] and listed[
            "has_more"
        ]
        assert created[0]["created_at"].endswith("Z")
        cancelled = client.post(f"/v1/jobs/{created[0]['id']}/cancel", headers=headers).json()
        assert cancelled["status"] == "cancelled"
        upload = client.post(
            "/v1/datasets", headers=headers, files={"file": ("d.jsonl", b'{"question": "q"}\n')}
        )
        assert upload.status_code == 201
        assert client.get("/readyz").json()["database"] == "ok"


def test_the_api_never_imports_torch(tmp_path: Path) -> None:
    """Statically (import-linter) and at run time: serving preset and spec jobs loads no torch module."""
    code = f"""
import sys
from fastapi.testclient import TestClient
from twofold.api.main import create_app
from twofold.store.db import make_engine, make_session_factory
from twofold.store.keys import create_api_key
from twofold.store.migrate import upgrade
from twofold.store.settings import Settings
url = "sqlite:///{tmp_path / "t.db"}"
upgrade(url)
with make_session_factory(make_engine(url))() as s:
    _, key = create_api_key(s, tenant_name="t")
    s.commit()
with TestClient(create_app(Settings(database_url=url, artifacts_url="{tmp_path / "a"}"))) as c:
    h = {{"Authorization": "Bearer " + key}}
    assert c.get("/v1/presets", headers=h).status_code == 200
    assert c.post("/v1/jobs", headers=h, json={{"preset": "smoke"}}).status_code == 201
print([m for m in ("torch", "transformers", "trl", "twofold.workers") if m in sys.modules])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # import-linter reads the packages under their installed names through the view `make lint` uses
    subprocess.run([sys.executable, "scripts/typing_view.py"], cwd=REPO, check=True)
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ".typing"},
    )
    assert "api never imports torch or workers KEPT" in lint.stdout, lint.stdout + lint.stderr
