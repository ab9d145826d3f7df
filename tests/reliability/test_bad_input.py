"""Bad input against the running API server: malformed datasets and job specs answer 4xx naming the line or the
field, and leave nothing behind (no row, no file); an oversized upload is refused with 413 while it is still
being sent, without the server's memory growing with it."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import RelStack, rel_spec

pytestmark = [pytest.mark.services]

GOOD = b'{"question": "What is 2+2?", "answer": "4"}\n'

# (what, file content, expected status, expected param)
BAD_DATASETS: list[tuple[str, bytes, int, str]] = [
    ("invalid JSON", b'{"question": "2+2?"\n', 422, "line 1"),
    ("empty file", b"", 422, "file"),
    ("blank lines only", b"\n  \n\t\n", 422, "file"),
    ("non-UTF-8 bytes", b'{"question": "caf\xe9"}\n', 422, "line 1"),
    ("UTF-8 byte-order mark", b'\xef\xbb\xbf{"question": "2+2?"}\n', 422, "line 1"),
    ("not an object", b"[1, 2, 3]\n", 422, "line 1"),
    ("unknown field", b'{"question": "2+2?", "solution": "4"}\n', 422, "line 1: solution"),
    ("no question or messages", b'{"answer": "4"}\n', 422, "line 1"),
    ("both question and messages", b'{"question": "q", "messages": []}\n', 422, "line 1"),
    ("question not a string", b'{"question": 4}\n', 422, "line 1: question"),
    ("question blank", b'{"question": "   "}\n', 422, "line 1: question"),
    ("answer an object", b'{"question": "q", "answer": {"value": 4}}\n', 422, "line 1: answer"),
    ("answer NaN", b'{"question": "q", "answer": NaN}\n', 422, "line 1: answer"),
    ("answer a boolean", b'{"question": "q", "answer": true}\n', 422, "line 1: answer"),
    ("id a number", b'{"question": "q", "id": 7}\n', 422, "line 1: id"),
    ("id with a control character", b'{"question": "q", "id": "a\\u0007b"}\n', 422, "line 1: id"),
    ("duplicate ids", b'{"question": "a", "id": "x"}\n{"question": "b", "id": "x"}\n', 422, "line 2: id"),
    (
        "messages without a user role",
        b'{"messages": [{"role": "system", "content": "be brief"}]}\n',
        422,
        "line 1: messages",
    ),
    (
        "message content not a string",
        b'{"messages": [{"role": "user", "content": 4}]}\n',
        422,
        "line 1: messages[0]",
    ),
    (
        "message with an unknown role",
        b'{"messages": [{"role": "robot", "content": "hi"}]}\n',
        422,
        "line 1: messages[0]",
    ),
    ("metadata not an object", b'{"question": "q", "metadata": [1]}\n', 422, "line 1: metadata"),
    (
        "nested garbage",
        b'{"question": "q", "metadata": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n",
        422,
        "line 1",
    ),
    ("bad line after good ones", GOOD * 10 + b'{"question": }\n' + GOOD, 422, "line 11"),
    ("one giant line of garbage", b"x" * 900_000, 422, "line 1"),
    ("one giant line over the limit", b'{"question": "' + b"x" * (2 << 20) + b'"}', 413, ""),
]

# (what, request body of POST /v1/jobs, expected param)
BAD_SPECS: list[tuple[str, Any, str | None]] = [
    ("spec not an object", {"spec": [1, 2]}, "spec"),
    ("neither preset nor spec", {}, "spec"),
    ("both preset and spec", {"preset": "smoke", "spec": {}}, "spec"),
    ("unknown preset", {"preset": "huge"}, "preset"),
    ("unknown top-level field", {"spec": {}, "priority": 1}, "priority"),
    ("teacher without base_url", {"spec": {"teacher": {"model": "m"}}}, "teacher.base_url"),
    (
        "teacher base_url not http",
        {"spec": {"teacher": {"base_url": "file:///etc", "model": "m"}}},
        "teacher.base_url",
    ),
    (
        "unknown section",
        {"spec": {"teacher": {"base_url": "http://x/v1", "model": "m"}, "optimizer": {}}},
        "optimizer",
    ),
    ("negative samples", "teacher.n=0", "teacher.n"),
    ("temperatures a string", "teacher.temperatures=hot", "teacher.temperatures[0]"),
    ("unknown RL algorithm", "rl.algo=dqn", "rl.algo"),
    ("negative epochs", "sft.epochs=-1", "sft.epochs"),
    ("unknown field in a section", "teacher.colour=blue", "teacher.colour"),
    ("server path in data", "data.path=/etc/passwd", "data.path"),
    ("student path outside the models directory", "student.path=../../etc", "student.path"),
    ("NaN learning rate", "rl.lr=nan", "rl.lr"),
    ("unknown dataset", {"spec": None, "preset": "smoke", "dataset": "0" * 32}, "dataset"),
    (
        "metadata value with a control character",
        {"preset": "smoke", "metadata": {"k": "a\u0007"}},
        "metadata.k",
    ),
    ("deeply nested spec", "nested", None),
]


def _counts(rel: RelStack) -> tuple[int, int, int]:
    """(datasets, jobs, files under the artifact root's datasets/) right now."""
    datasets = rel.sql("SELECT count(*) FROM datasets")[0][0]
    jobs = rel.sql("SELECT count(*) FROM jobs")[0][0]
    root = Path(rel.env["TWOFOLD_ARTIFACTS_URL"]) / "datasets"
    files = sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    return datasets, jobs, files


def _bad_spec_body(rel: RelStack, how: Any) -> Any:
    if not isinstance(how, str):
        return how
    if how == "nested":
        return None
    spec = rel_spec(rel.faulty.url)  # type: ignore[union-attr]
    path, value = how.split("=", 1)
    section, field = path.split(".")
    parsed: Any = {"0": 0, "-1": -1, "nan": float("nan")}.get(value, value)
    spec[section][field] = parsed
    return {"spec": spec}


def test_malformed_datasets_answer_4xx_naming_the_line_and_store_nothing(rel: RelStack) -> None:
    before = _counts(rel)
    seen: list[str] = []
    for what, content, status, param in BAD_DATASETS:
        r = httpx.post(
            f"{rel.api_url}/v1/datasets",
            headers=rel.headers,
            files={"file": ("data.jsonl", content)},
            timeout=60,
        )
        assert r.status_code == status, (what, r.status_code, r.text[:300])
        error = r.json()["error"]
        if status == 422:
            assert error["param"] == param, (what, error)
            assert error["message"] and "Traceback" not in error["message"], (what, error)
        seen.append(what)
    assert _counts(rel) == before, "a refused upload left a row or a file behind"
    ok = httpx.post(
        f"{rel.api_url}/v1/datasets", headers=rel.headers, files={"file": ("ok.jsonl", GOOD * 3)}, timeout=30
    )
    assert ok.status_code == 201 and ok.json()["row_count"] == 3  # the same server still takes good files
    assert len(seen) >= 15


def test_malformed_job_specs_answer_4xx_naming_the_field_and_store_nothing(rel: RelStack) -> None:
    before = _counts(rel)
    for what, how, param in BAD_SPECS:
        body = _bad_spec_body(rel, how)
        if body is None:  # a JSON document nested 50,000 levels deep
            content = b'{"spec": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}"
        else:
            content = json.dumps(body).encode()  # NaN stays NaN, as a careless client would send it
        r = httpx.post(
            f"{rel.api_url}/v1/jobs",
            headers={**rel.headers, "Content-Type": "application/json"},
            content=content,
            timeout=30,
        )
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
        if param is not None:
            assert r.json()["error"]["param"] == param, (what, r.json())
    assert _counts(rel) == before, "a refused job left a row behind"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_an_oversized_streamed_upload_is_refused_before_it_is_sent(rel: RelStack) -> None:
    """A chunked upload with no Content-Length, 64 MiB long against a 1 MiB limit: the 413 must arrive while
    the client is still sending, and the API process must not grow by the body's size."""
    limit = int(rel.env["TWOFOLD_MAX_UPLOAD_BYTES"])
    total = 64 << 20
    api_pid = rel.procs["api"].pid
    rss_before = _rss_kib(api_pid)
    host, port = rel.api_url.removeprefix("http://").split(":")
    boundary = "reliabilityboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk = (GOOD * (65536 // len(GOOD) + 1))[:65536]
    sent = 0
    answer = b""
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            (
                "POST /v1/datasets HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nAuthorization: {rel.headers['Authorization']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        body = head
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                answer = sock.recv(65536)
                break
            piece = body or chunk
            body = b""
            try:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        sock.settimeout(10)
        while b"payload_too_large" not in answer:  # the status line may come before the JSON body
            try:
                more = sock.recv(65536)
            except OSError:
                break
            if not more:
                break
            answer += more
    elapsed = time.monotonic() - started
    rss_after = _rss_kib(api_pid)
    status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    print(
        f"oversized upload: 413 after {sent / 2**20:.1f} MiB of {total >> 20} MiB sent ({elapsed:.2f}s); "
        f"API RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB"
    )
    assert status_line.startswith("HTTP/1.1 413"), answer[:300]
    assert b"payload_too_large" in answer
    assert sent < total / 4, f"the server read {sent} bytes before refusing"
    assert sent < limit * 8
    assert rss_after - rss_before < 32 * 1024, "the API process grew with the refused body"
