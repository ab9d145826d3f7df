"""Dataset uploads: per-line validation naming the line, size limit (413) enforced while streaming,
built-in datasets, idempotency, and jobs on an uploaded dataset."""

from __future__ import annotations

import hashlib
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from tests.services import free_port

pytestmark = pytest.mark.services

GOOD = (
    b'{"question": "Ana has 2 pens. She gets 3 more. How many now?", "answer": 5, "id": "a"}\n'
    b"\n"
    b'{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}], "answer": "2"}\n'
)


def test_upload_validates_and_stores_the_file(api) -> None:
    r = api.upload(api.a, GOOD, name="math.jsonl")
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["object"], d["name"], d["format"], d["row_count"], d["has_answers"], d["builtin"]) == (
        "dataset",
        "math.jsonl",
        "jsonl",
        2,
        True,
        False,
    )
    assert d["sha256"] == hashlib.sha256(GOOD).hexdigest()
    assert api.client.get(f"/v1/datasets/{d['id']}", headers=api.a).json() == d
    named = api.client.post(
        "/v1/datasets", headers=api.a, files={"file": ("x.jsonl", GOOD)}, data={"name": "mine"}
    )
    assert named.json()["name"] == "mine"


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"question": "ok"}\n{"question": "ok", \n', "line 2"),  # invalid JSON
        (b'{"question": "ok"}\n[1, 2]\n', "line 2"),  # not an object
        (b'{"answer": 3}\n', "line 1"),  # neither question nor messages
        (b'{"question": "a", "messages": []}\n', "line 1"),  # both
        (b'{"question": ""}\n', "line 1: question"),
        (b'{"question": 7}\n', "line 1: question"),
        (b'{"question": "q", "answer": true}\n', "line 1: answer"),
        (b'{"question": "q", "answer": [1]}\n', "line 1: answer"),
        (b'{"question": "q", "colour": "red"}\n', "line 1: colour"),
        (b'{"question": "q", "id": 5}\n', "line 1: id"),
        (b'{"question": "q", "id": "x"}\n{"question": "r", "id": "x"}\n', "line 2: id"),
        (b'{"messages": [{"role": "user"}]}\n', "line 1: messages[0]"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}\n', "line 1: messages[0]"),
        (b'{"messages": [{"role": "system", "content": "x"}]}\n', "line 1: messages"),
        (b'{"messages": "hi"}\n', "line 1: messages"),
        (b'{"question": "ok"}\n{"question": "\xff\xfe"}\n', "line 2"),  # not UTF-8
        (b"", "file"),
        (b"\n\n  \n", "file"),
        (b'{"question": "q", "answer": NaN}\n', "line 1: answer"),
    ],
)
def test_bad_lines_are_refused_naming_the_line(api, content: bytes, param: str) -> None:
    r = api.upload(api.a, content)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {
        "code": "validation_error",
        "message": r.json()["error"]["message"],
        "param": param,
    }
    assert [d for d in api.client.get("/v1/datasets", headers=api.a).json()["data"] if not d["builtin"]] == []
    stored = Path(api.settings.artifacts_url) / "datasets"
    assert not stored.exists() or not any(p.is_file() for p in stored.rglob("*"))


def test_missing_file_field_is_a_422(api) -> None:
    r = api.client.post("/v1/datasets", headers=api.a, data={"name": "x"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "file"


def test_an_upload_over_the_limit_is_413(api) -> None:
    big = b'{"question": "' + b"x" * 5000 + b'"}\n'  # limit is 4096 bytes of file
    r = api.upload(api.a, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    declared = api.upload(api.a, big * 40)  # over the whole-body limit: refused from Content-Length alone
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "payload_too_large"
    json_body = api.client.post(
        "/v1/jobs",
        headers=api.a,
        json={"preset": "smoke", "metadata": {"k": "v" * 400}} | {"spec": {"x": "y" * 2_000_000}},
    )
    assert json_body.status_code == 413


@pytest.fixture
def live_server(api) -> Iterator[int]:
    """The same app served by uvicorn on a loopback port (a real HTTP server)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api.client.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_chunked_upload_is_refused_before_its_body_ends(api, live_server: int) -> None:
    """No Content-Length and a body that never ends: the server can answer only if it counts as it reads."""
    token = api.a["Authorization"]
    head = (
        "POST /v1/datasets HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {token}\r\n"
        "Content-Type: multipart/form-data; boundary=BOUNDARY\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    part = b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
    lines = (b'{"question": "' + b"y" * 1000 + b'"}\n') * 16
    chunk = f"{len(lines):x}\r\n".encode() + lines + b"\r\n"
    sock = socket.create_connection(("127.0.0.1", live_server), timeout=10)
    sent = 0
    try:
        sock.sendall(head + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        while sent < 512 * 1024:  # 8x the limit, and the terminating chunk is never sent
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(chunk)
            sent += len(chunk)
        response = b""
        while not response.rstrip().endswith(b"}"):
            data = sock.recv(65536)  # times out (fails the test) if the server waits for the whole body
            if not data:
                break
            response += data
    except (BrokenPipeError, ConnectionResetError) as exc:
        pytest.fail(f"the server dropped the connection without a 413 after {sent} bytes: {exc}")
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"payload_too_large"' in response


def test_builtin_datasets_are_listed_first_and_paginate(api) -> None:
    uploaded = [api.upload(api.a, GOOD).json()["id"] for _ in range(2)]
    first = api.client.get("/v1/datasets", headers=api.a, params={"limit": 2}).json()
    assert [d["id"] for d in first["data"]] == ["gsm8k", "mmlu_pro"] and first["has_more"]
    assert all(d["builtin"] for d in first["data"])
    second = api.client.get("/v1/datasets", headers=api.a, params={"limit": 2, "after": "mmlu_pro"}).json()
    assert [d["id"] for d in second["data"]] == ["arithmetic", uploaded[1]] and second["has_more"]
    third = api.client.get("/v1/datasets", headers=api.a, params={"limit": 2, "after": uploaded[1]}).json()
    assert [d["id"] for d in third["data"]] == [uploaded[0]] and not third["has_more"]
    assert api.client.get("/v1/datasets/arithmetic", headers=api.a).json()["builtin"] is True


def test_upload_idempotency(api) -> None:
    headers = {**api.a, "Idempotency-Key": "upload-1"}
    first = api.client.post("/v1/datasets", headers=headers, files={"file": ("d.jsonl", GOOD)})
    again = api.client.post("/v1/datasets", headers=headers, files={"file": ("d.jsonl", GOOD)})
    assert first.status_code == again.status_code == 201 and first.json()["id"] == again.json()["id"]
    other = api.client.post("/v1/datasets", headers=headers, files={"file": ("d.jsonl", GOOD + GOOD)})
    assert other.status_code == 409


def test_a_job_on_an_uploaded_dataset_runs_the_custom_task(api) -> None:
    dataset = api.upload(api.a, GOOD).json()
    job = api.create_job(api.a, spec=api.spec(data={"task": "arithmetic"}), dataset=dataset["id"])
    assert job["dataset"] == dataset["id"]
    assert job["spec"]["data"]["task"] == "custom" and job["spec"]["data"]["has_gold"] is True
    assert job["spec"]["data"]["path"] == f"datasets/{_tenant_id(api)}/{dataset['id']}.jsonl"
    gsm = api.create_job(api.a, preset="smoke", dataset="gsm8k")
    assert gsm["spec"]["data"]["path"] == str(Path(api.settings.data_dir).resolve() / "gsm8k")


def _tenant_id(api: object) -> str:
    from twofold.store.keys import find_key

    with api.db() as s:  # type: ignore[attr-defined]
        row = find_key(s, api.a["Authorization"].split()[1])  # type: ignore[attr-defined]
        assert row is not None
        return str(row.tenant_id)
