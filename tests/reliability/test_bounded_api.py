"""One tenant must not be able to exhaust what the API process shares with the others, and clients must outlive a
restart (issue 20): event streams, slow clients, YAML, uploads and request bodies, the operator's key and metrics
surface, and the SDK/CLI followers of a job across an API restart.

Most cases run against ``quiet``: a ``twofold serve`` on its own schema whose broker messages nobody consumes, so
its jobs stay pending (a stream on one stays open until the job is cancelled) and nothing here costs a worker's
time. The restart case runs a real job on the shared stack. Every loop is bounded; all traffic is on loopback.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, text

import twofold_client as tc
from tests.reliability.conftest import FINISHED, RelStack, rel_spec
from tests.services import free_port, temp_schema
from tests.workers.conftest import REPO, TWOFOLD
from twofold.store.db import make_engine, make_session_factory
from twofold.store.jobs import append_event

pytestmark = [pytest.mark.services]

QUIET_APP = "tf-reliability-quiet-api"
METRICS_TOKEN = "operator-metrics-token"
STREAMS_PER_KEY = 150
LINE_LIMIT = 1 << 20  # the default TWOFOLD_MAX_LINE_BYTES
END_OF_BODY = b"0\r\n\r\n"  # the last chunk of a chunked response (the connection itself stays open)
# A bomb like the issue's: nine levels of ten aliases each (332 characters; 10**9 strings once expanded).
BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)


@dataclass
class Quiet:
    """The quiet API: its URL, two tenants' keys, its database, and a way to run the CLI on that database."""

    rel: RelStack
    url: str
    a: dict[str, str]
    b: dict[str, str]
    db_url: str
    engine: Engine
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a ``twofold`` command against this API and its database."""
        return {**self.rel.env, "TWOFOLD_DATABASE_URL": self.db_url, "TWOFOLD_BASE_URL": self.url, **extra}

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run ``twofold ARGS`` to completion (whatever its exit status)."""
        return subprocess.run(
            [*TWOFOLD, *args], cwd=REPO, env=self.env(**extra), capture_output=True, text=True, timeout=120
        )

    def new_key(self, tenant: str) -> str:
        """A new API key of ``tenant`` on this database."""
        out = self.cli("apikey", "create", "--tenant", tenant)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    def create_job(self, headers: dict[str, str], **body: Any) -> str:
        """POST a small job (it stays pending) and return its id."""
        payload = body or {"spec": rel_spec("http://127.0.0.1:9/v1")}
        r = httpx.post(f"{self.url}/v1/jobs", headers=headers, json=payload, timeout=30)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def sql(self, query: str, **params: Any) -> list[Any]:
        """Run a statement on this API's schema (committed)."""
        with self.engine.begin() as conn:
            result = conn.execute(text(query), params)
            return list(result) if result.returns_rows else []

    def metric(self, name: str) -> float:
        """One unlabelled figure of ``/metrics`` (with the operator's token)."""
        body = httpx.get(
            f"{self.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
        ).text
        for line in body.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def open_transactions(self) -> int:
        """This API's database connections that sit inside a transaction right now."""
        rows = self.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app AND state LIKE 'idle in%'",
            app=QUIET_APP,
        )
        return int(rows[0][0])

    def rss_kib(self) -> int:
        """The API process's resident memory."""
        status = Path(f"/proc/{self.rel.procs['quiet'].pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


@pytest.fixture(scope="module")
def quiet(rel: RelStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Quiet]:
    """A second API on its own schema; its jobs are never picked up (nobody reads its broker prefix)."""
    root = tmp_path_factory.mktemp("quiet")
    with temp_schema(prefix="tf_rel_quiet") as db_url:
        url, key = rel.spawn_api(
            "quiet",
            database_url=db_url + f"&application_name={QUIET_APP}",
            broker_key_prefix="tf-reliability-unconsumed:",
            max_streams_per_key=str(STREAMS_PER_KEY),
            metrics_token=METRICS_TOKEN,
            max_upload_bytes=str(200 << 20),
            models_dir=str(root / "models"),
            data_dir=str(root / "data"),
            teacher_base_url="http://127.0.0.1:8000/v1",  # the preset teacher examples/job.yaml names
        )
        q = Quiet(rel, url, {"Authorization": f"Bearer {key}"}, {}, db_url, make_engine(db_url), root)
        q.b = {"Authorization": f"Bearer {q.new_key('quiet-other-tenant')}"}
        try:
            yield q
        finally:
            rel.kill("quiet", signal.SIGTERM)
            q.engine.dispose()


# --- raw HTTP helpers (clients that misbehave on purpose) ---------------------------------------------------------
def _connect(url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window the server sees stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(30)
    sock.connect((host, int(port)))
    return sock


def _request(
    url: str, method: str, path: str, headers: dict[str, str], *, rcvbuf: int | None = None
) -> socket.socket:
    """Send a request's head (and nothing else) and return the open socket."""
    sock = _connect(url, rcvbuf)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {url.removeprefix('http://')}\r\n{head}\r\n".encode())
    return sock


def _open_stream(url: str, headers: dict[str, str], job_id: str, **kw: Any) -> socket.socket:
    return _request(url, "GET", f"/v1/jobs/{job_id}/events?stream=true", headers, **kw)


def _status(sock: socket.socket, timeout: float = 20) -> tuple[int, bytes]:
    """The status code of the response on ``sock`` and what came after its head so far."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def _read_until(socks: list[socket.socket], marker: bytes, timeout: float) -> dict[socket.socket, bytes]:
    """Read every socket until its data holds ``marker`` or it closes, for at most ``timeout`` seconds."""
    got = {s: b"" for s in socks}
    waiting = set(socks)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        readable, _, _ = select.select(list(waiting), [], [], 0.5)
        for s in readable:
            try:
                more = s.recv(65536)
            except OSError:
                more = b""
            got[s] += more
            if not more or marker in got[s]:
                waiting.discard(s)
    return got


def _latencies(url: str, headers: dict[str, str], n: int, path: str = "/v1/jobs") -> list[float]:
    """Time ``n`` GETs of ``path`` one after the other (each must answer 200 within 30 s)."""
    out = []
    for _ in range(n):
        start = time.monotonic()
        r = httpx.get(url + path, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        out.append(time.monotonic() - start)
    return out


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


# --- 3. event streams ----------------------------------------------------------------------------------------------
def test_event_streams_share_one_poller_and_leave_the_pool_to_other_tenants(quiet: Quiet) -> None:
    job = quiet.create_job(quiet.a)
    streams = [_open_stream(quiet.url, quiet.a, job) for _ in range(STREAMS_PER_KEY)]
    try:
        assert [_status(s)[0] for s in streams] == [200] * STREAMS_PER_KEY
        assert quiet.metric("twofold_event_streams") == STREAMS_PER_KEY
        polls, start = quiet.metric("twofold_event_polls_total"), time.monotonic()
        latencies = _latencies(quiet.url, quiet.b, 20)
        time.sleep(max(0.0, 3.0 - (time.monotonic() - start)))
        rounds = quiet.metric("twofold_event_polls_total") - polls
        elapsed = time.monotonic() - start
        print(
            f"{STREAMS_PER_KEY} streams: {rounds:.0f} database rounds in {elapsed:.1f}s; other tenant's "
            f"GET /v1/jobs max {max(latencies) * 1000:.0f} ms; open transactions {quiet.open_transactions()}"
        )
        assert rounds <= elapsed / 0.5 + 3, "more than one database round per poll interval"
        assert max(latencies) < 2.0
        assert quiet.open_transactions() == 0  # no stream holds a connection while it waits

        # one more stream for the same key: refused, saying why; another key is not affected
        refused = httpx.get(f"{quiet.url}/v1/jobs/{job}/events?stream=true", headers=quiet.a, timeout=10)
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["param"] == "stream"
        assert f"already has {STREAMS_PER_KEY} open event streams" in error["message"]
        other = _open_stream(quiet.url, quiet.b, quiet.create_job(quiet.b))
        streams.append(other)
        assert _status(other)[0] == 200

        # every stream sees the job end, then ends; the slots are given back
        httpx.post(f"{quiet.url}/v1/jobs/{job}/cancel", headers=quiet.a, timeout=10).raise_for_status()
        ended = _read_until(streams[:-1], b"event: end", timeout=20)
        assert all(b"event: job.cancelled" in d and b"event: end" in d for d in ended.values())
    finally:
        _close(streams)
    deadline = time.monotonic() + 10
    while quiet.metric("twofold_event_streams") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert quiet.metric("twofold_event_streams") == 0


def test_a_vanished_client_frees_its_stream_slot_and_a_revoked_key_loses_its_streams(quiet: Quiet) -> None:
    key = quiet.new_key("quiet-vanishing-tenant")
    headers = {"Authorization": f"Bearer {key}"}
    job = quiet.create_job(headers)
    first = [_open_stream(quiet.url, headers, job) for _ in range(STREAMS_PER_KEY)]
    assert [_status(s)[0] for s in first] == [200] * STREAMS_PER_KEY
    for s in first[:100]:  # the clients go away without a word (a reset, as a killed process leaves)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    deadline = time.monotonic() + 10
    while quiet.metric("twofold_event_streams") > 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    again = [_open_stream(quiet.url, headers, job) for _ in range(100)]
    try:
        assert [_status(s)[0] for s in again] == [200] * 100

        start = time.monotonic()
        revoked = quiet.cli("apikey", "revoke", key[:10])  # a new process: about 2 s of that is start-up
        assert revoked.returncode == 0, revoked.stderr
        closed = _read_until(first[100:] + again, END_OF_BODY, timeout=10)
        took = time.monotonic() - start
    finally:
        _close(first[100:] + again)
    print(f"revoked key: {len(closed)} streams closed {took:.1f}s after `twofold apikey revoke` started")
    bad = [d[-200:] for d in closed.values() if not d.endswith(END_OF_BODY) or b"event: end" in d]
    assert not bad and took < 10, (len(bad), bad[:3], took)
    r = httpx.get(f"{quiet.url}/v1/jobs/{job}/events?stream=true", headers=headers, timeout=10)
    assert r.status_code == 401


def test_a_burst_of_requests_does_not_wedge_the_pool(quiet: Quiet) -> None:
    """300 requests at once (more than the 40 worker threads and the 15 pooled connections): each must be
    answered, in turn, with no request left waiting on the pool (a thread that waits for a connection while the
    request holding it waits for a thread would wedge the process until the pool's 30 s timeout)."""
    job = quiet.create_job(quiet.a)
    paths = [f"/v1/jobs/{job}", "/v1/jobs?limit=5", f"/v1/jobs/{job}/events"]
    start = time.monotonic()
    socks = [_request(quiet.url, "GET", paths[i % 3], {**quiet.a, "Connection": "close"}) for i in range(300)]
    try:
        statuses = [_status(s, timeout=60)[0] for s in socks]
    finally:
        _close(socks)
    took = time.monotonic() - start
    print(f"300 requests at once: all answered in {took:.1f}s")
    assert statuses == [200] * 300
    assert took < 25, "requests waited on the pool"
    assert "QueuePool limit" not in quiet.rel.log("quiet")


@pytest.fixture(scope="module")
def busy_job(quiet: Quiet) -> str:
    """A pending job of tenant A with 3,000 events of about 1 KB each (3 MB to stream)."""
    job = quiet.create_job(quiet.a)
    with make_session_factory(quiet.engine)() as session:
        for i in range(3000):
            append_event(session, uuid.UUID(job), type="bulk", message=f"{i} " + "m" * 1000)
        session.commit()
    return job


def test_clients_that_do_not_read_or_finish_hold_no_database_connection(quiet: Quiet, busy_job: str) -> None:
    """Three ways to sit on connections, 50 of them against a pool of 15: answers never read (a 1.5 MB
    list), request bodies never finished, event streams never read. None may hold a pooled connection."""
    tags = {f"k{i}": ("v" * 480) for i in range(50)}
    for _ in range(60):  # tenant A's GET /v1/jobs?limit=100 becomes about 1.5 MB
        quiet.create_job(quiet.a, spec=rel_spec("http://127.0.0.1:9/v1"), metadata=tags)
    readers = [_request(quiet.url, "GET", "/v1/jobs?limit=100", quiet.a, rcvbuf=4096) for _ in range(20)]
    writers = []
    for _ in range(20):
        headers = {**quiet.a, "Content-Type": "application/json", "Content-Length": "50000"}
        sock = _request(quiet.url, "POST", "/v1/jobs", headers)
        sock.sendall(b'{"spec": {')  # and nothing more
        writers.append(sock)
    streams = [_open_stream(quiet.url, quiet.a, busy_job, rcvbuf=4096) for _ in range(10)]
    try:
        time.sleep(2.0)  # the server writes until every reader's window is full
        latencies = _latencies(quiet.url, quiet.b, 10)
        transactions = quiet.open_transactions()
    finally:
        _close(readers + writers + streams)
    print(
        f"20 unread answers, 20 unfinished bodies, 10 unread streams: other tenant max "
        f"{max(latencies) * 1000:.0f} ms, open transactions {transactions}"
    )
    assert max(latencies) < 2.0
    assert transactions == 0


def test_streams_that_never_read_buffer_a_bounded_amount(quiet: Quiet, busy_job: str) -> None:
    """30 streams of a 3 MB backlog that read nothing: each holds at most one batch of events (500) and what
    the socket takes, not the backlog (which would be 90 MB)."""
    rss = quiet.rss_kib()
    streams = [_open_stream(quiet.url, quiet.a, busy_job, rcvbuf=4096) for _ in range(30)]
    try:
        assert [_status(s)[0] for s in streams] == [200] * 30
        time.sleep(3.0)
        grown = (quiet.rss_kib() - rss) / 1024
        latencies = _latencies(quiet.url, quiet.b, 5)
    finally:
        _close(streams)
    print(
        f"30 unread streams of a 3 MB backlog: API RSS {grown:+.0f} MiB; other tenant max {max(latencies):.2f}s"
    )
    assert grown < 48
    assert max(latencies) < 2.0


# --- 4. YAML ----------------------------------------------------------------------------------------------------
def test_a_yaml_alias_bomb_is_refused_at_every_entry_point(quiet: Quiet, tmp_path: Path) -> None:
    jobs_before = quiet.sql("SELECT count(*) FROM jobs")[0][0]
    start = time.monotonic()
    r = httpx.post(f"{quiet.url}/dashboard/spec", headers=quiet.a, json={"text": BOMB}, timeout=30)
    took = time.monotonic() - start
    assert len(BOMB) < 400 and r.status_code == 422 and took < 1.0, (r.status_code, took)
    assert len(r.content) < 2000 and r.json()["error"]["param"] == "spec line 2"
    assert "alias" in r.json()["error"]["message"]

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    start = time.monotonic()
    created = quiet.cli("jobs", "create", "-f", str(bomb), "--api-key", quiet.a["Authorization"][7:])
    assert created.returncode == 2 and f"{bomb}:2" in created.stderr and "alias" in created.stderr
    ran = quiet.cli("run", str(bomb), "--out", str(tmp_path / "out"))
    assert ran.returncode == 1 and f"{bomb}:2" in ran.stderr, ran.stderr
    assert time.monotonic() - start < 30 and not (tmp_path / "out").exists()
    assert quiet.sql("SELECT count(*) FROM jobs")[0][0] == jobs_before


@pytest.mark.parametrize(
    ("text", "param", "words"),
    [
        ("base: &b {lr: 1}\nsft:\n  <<: *b\n", "spec line 3", "alias"),  # a merge key needs an alias
        ("sft: " + "[" * 40 + "]" * 40, "spec line 1", "nested"),
        ("sft:\n  lr: 1\n  lr: 2\n", "spec line 3", "duplicate key"),
        ("x: " + "y" * 250_000, "text", "at most"),  # over the spec length limit
    ],
)
def test_other_yaml_shapes_are_refused_naming_the_line(
    quiet: Quiet, text: str, param: str, words: str
) -> None:
    r = httpx.post(f"{quiet.url}/dashboard/spec", headers=quiet.a, json={"text": text}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text[:300]
    assert words in r.json()["error"]["message"]


def test_an_exponent_learning_rate_is_a_float_on_every_entry_point(quiet: Quiet, tmp_path: Path) -> None:
    r = httpx.post(
        f"{quiet.url}/dashboard/spec", headers=quiet.a, json={"text": "sft: {lr: 1e-5}"}, timeout=10
    )
    assert r.status_code == 200 and r.json()["spec"]["sft"]["lr"] == 1e-5
    spec = rel_spec("http://127.0.0.1:9/v1")
    text = yaml.safe_dump(spec).replace("sft:\n", "sft:\n  lr: 1e-5\n").replace("rl:\n", "rl:\n  lr: 5e-7\n")
    path = tmp_path / "job.yaml"
    path.write_text(text)
    out = quiet.cli("jobs", "create", "-f", str(path), "--json", "--api-key", quiet.a["Authorization"][7:])
    assert out.returncode == 0, out.stderr
    stored = json.loads(out.stdout)["spec"]
    assert (stored["sft"]["lr"], stored["rl"]["lr"]) == (1e-5, 5e-7)


# --- 5. uploads and request bodies ---------------------------------------------------------------------------------
def _upload(
    quiet: Quiet, pieces: Iterator[bytes], *, total: int, chunked: bool = True, name: str = "file"
) -> tuple[int, dict[str, Any], int, int]:
    """Stream a multipart upload of ``total`` file bytes from ``pieces``; stop sending as soon as the server
    answers. Returns (status, error body, file bytes sent, API RSS growth in KiB)."""
    boundary = "reliabilityboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    headers = {**quiet.a, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(len(head) + total + len(tail))
    rss = quiet.rss_kib()
    sock = _request(quiet.url, "POST", "/v1/datasets", headers)
    sent = 0
    answer = b""

    def send(data: bytes) -> None:
        sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)

    try:
        send(head)
        for piece in pieces:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            send(piece)
            sent += len(piece)
        else:
            send(tail)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, answer = _status(sock)
    if b"}}" not in answer:
        answer += _read_until([sock], b"}}", timeout=10)[sock]
    grown = quiet.rss_kib() - rss
    sock.close()
    return status, json.loads(answer[answer.index(b"{") :]), sent, grown


def _line(size: int, piece: int = 1 << 16) -> Iterator[bytes]:
    """One JSONL line ``{"question": "xxx...`` of ``size`` bytes, in pieces (never closed: it is too long)."""
    yield b'{"question": "'
    left = size - 14
    while left > 0:
        yield b"x" * min(piece, left)
        left -= piece


def test_a_150_mib_single_line_upload_is_refused_early_naming_the_line(quiet: Quiet) -> None:
    total = 150 << 20
    start = time.monotonic()
    status, body, sent, grown = _upload(quiet, _line(total), total=total)
    print(
        f"150 MiB line: {status} {body['error']['param']} after {sent / 2**20:.1f} MiB sent "
        f"({time.monotonic() - start:.2f}s); API RSS +{grown / 1024:.0f} MiB"
    )
    assert status == 413 and body["error"]["param"] == "line 1"
    assert f"over the {LINE_LIMIT}-byte line limit" in body["error"]["message"]
    assert sent < 16 << 20, "the server read far past the line limit before refusing"
    assert grown < 32 * 1024


def test_long_lines_are_found_wherever_they_are_and_however_the_body_is_sent(quiet: Quiet) -> None:
    good = b'{"question": "What is 2+2?", "answer": "4"}\n'

    def after_good_lines() -> Iterator[bytes]:
        yield good * 1000
        yield from _line(64 << 20)

    status, body, sent, _ = _upload(quiet, after_good_lines(), total=len(good) * 1000 + (64 << 20))
    assert (status, body["error"]["param"]) == (413, "line 1001") and sent < 16 << 20
    # with a Content-Length instead of chunks: refused while sending all the same
    status, body, sent, _ = _upload(quiet, _line(64 << 20), total=64 << 20, chunked=False)
    assert (status, body["error"]["param"]) == (413, "line 1") and sent < 16 << 20
    # a line of exactly the limit is a line like any other
    exact = b'{"question": "' + b"x" * (LINE_LIMIT - 16) + b'"}'
    assert len(exact) == LINE_LIMIT
    ok = httpx.post(
        f"{quiet.url}/v1/datasets", headers=quiet.a, files={"file": ("ok.jsonl", exact + b"\n")}, timeout=60
    )
    assert ok.status_code == 201 and ok.json()["row_count"] == 1


def test_other_parts_of_an_upload_are_bounded(quiet: Quiet) -> None:
    datasets_before = quiet.sql("SELECT count(*) FROM datasets")[0][0]
    good = b'{"question": "q"}\n'
    two_files = httpx.post(
        f"{quiet.url}/v1/datasets",
        headers=quiet.a,
        files=[("file", ("a.jsonl", good)), ("file", ("b.jsonl", good))],
        timeout=30,
    )
    assert two_files.status_code == 400 and "files" in two_files.json()["error"]["message"]
    long_name = httpx.post(
        f"{quiet.url}/v1/datasets",
        headers=quiet.a,
        data={"name": "n" * 10_000},
        files={"file": ("a.jsonl", good)},
        timeout=30,
    )
    assert long_name.status_code == 400 and "maximum size" in long_name.json()["error"]["message"]
    assert quiet.sql("SELECT count(*) FROM datasets")[0][0] == datasets_before


def _chunked_post(quiet: Quiet, path: str, content_type: str, size: int) -> tuple[int, int]:
    """POST ``size`` bytes in 64 KiB chunks without a Content-Length; (status, bytes sent before it)."""
    sock = _request(
        quiet.url, "POST", path, {**quiet.a, "Content-Type": content_type, "Transfer-Encoding": "chunked"}
    )
    sent = 0
    try:
        while sent < size:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(b"10000\r\n" + b" " * 65536 + b"\r\n")
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    status, _ = _status(sock)
    sock.close()
    return status, sent


def test_every_route_has_a_body_limit(quiet: Quiet) -> None:
    job = quiet.create_job(quiet.a)
    # the JSON routes: 1 MiB, enforced while the body streams in
    for path in ("/v1/jobs", "/dashboard/spec"):
        status, sent = _chunked_post(quiet, path, "application/json", 64 << 20)
        assert status == 413 and sent < 16 << 20, (path, status, sent)  # socket buffers hold a few MiB
    # routes that take no body, or a short form: 16 KiB
    for path, kind in (
        (f"/v1/jobs/{job}/cancel", "application/json"),
        ("/dashboard/login", "application/x-www-form-urlencoded"),
        ("/v1/jobs", "text/plain"),
    ):
        big = b"x" * (64 << 10) if path != "/v1/jobs" else b"x" * (2 << 20)
        r = httpx.post(quiet.url + path, headers={**quiet.a, "Content-Type": kind}, content=big, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", (path, r.text)
    assert httpx.get(f"{quiet.url}/v1/jobs/{job}", headers=quiet.a, timeout=10).json()["status"] == "pending"


# --- 7. clients that outlive a restart ------------------------------------------------------------------------------
def test_followers_of_a_job_outlive_an_api_restart(rel: RelStack, tmp_path: Path) -> None:
    """``jobs create --wait``, ``jobs logs -f`` and ``client.jobs.wait`` on a second API process, which is
    killed mid-job and brought back on the same port eight seconds later: each carries on and sees every event
    once; a follower with a 2 s budget gives up with a clear message."""
    port = free_port()
    url, key = rel.spawn_api("api-restart", port=port)
    env = {**rel.env, "TWOFOLD_BASE_URL": url, "TWOFOLD_API_KEY": key}
    spec = rel_spec(rel.faulty.url, sft={"epochs": 10}, rl={"steps": 12})  # type: ignore[union-attr]
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(spec))

    def spawn(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*TWOFOLD, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    creator = spawn("jobs", "create", "-f", str(job_file), "--wait", "--json", "--poll-interval", "0.5")
    client = tc.Client(base_url=url, api_key=key, reconnect_timeout=120)
    deadline = time.monotonic() + 30
    while not (listed := client.jobs.list(limit=1).data) and time.monotonic() < deadline:
        time.sleep(0.2)
    job_id = listed[0].id
    logs = spawn("jobs", "logs", job_id, "-f", "--json")
    impatient = spawn("jobs", "logs", job_id, "-f", "--reconnect-timeout", "2")
    seen: list[int] = []
    waited: dict[str, Any] = {}

    def wait() -> None:
        try:
            waited["job"] = client.jobs.wait(job_id, poll_interval=0.5, on_event=lambda e: seen.append(e.seq))
        except Exception as exc:  # reported by the assertion below
            waited["error"] = exc

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    deadline = time.monotonic() + 120
    while len(seen) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(seen) >= 5, "the job did not start"

    rel.kill("api-restart", signal.SIGKILL)
    events_at_kill = rel.sql("SELECT count(*) FROM events WHERE job_id = :j", j=job_id)[0][0]
    time.sleep(8)
    assert impatient.wait(timeout=30) == 1
    gave_up = impatient.stderr.read() if impatient.stderr else ""
    assert "did not answer for" in gave_up and "reconnect_timeout=2s" in gave_up, gave_up
    rel.spawn_api("api-restart", port=port)

    waiter.join(timeout=300)
    assert "job" in waited, waited.get("error", "jobs.wait did not return")
    status = waited["job"].status
    assert creator.wait(timeout=120) in (0, 3), creator.stderr.read() if creator.stderr else ""
    assert logs.wait(timeout=60) == 0, logs.stderr.read() if logs.stderr else ""
    client.close()
    total = rel.sql("SELECT count(*) FROM events WHERE job_id = :j", j=job_id)[0][0]
    created = json.loads(creator.stdout.read() if creator.stdout else "{}")
    logged = [json.loads(line)["seq"] for line in (logs.stdout.read() if logs.stdout else "").splitlines()]
    print(
        f"API down 8 s mid-job ({events_at_kill} of {total} events before the kill): create --wait, logs -f and "
        f"jobs.wait saw {len(logged)} and {len(seen)} events; job {status}"
    )
    assert status in FINISHED and created["status"] == status
    assert logged == list(range(1, total + 1)), "logs -f lost or repeated events across the restart"
    assert seen == list(range(1, total + 1)), "jobs.wait lost or repeated events across the restart"
    assert total > events_at_kill, "the job did not go on while the API was down"
    rel.kill("api-restart", signal.SIGTERM)


def test_a_409_is_answered_once_and_not_retried(quiet: Quiet) -> None:
    job = quiet.create_job(quiet.a)
    httpx.post(f"{quiet.url}/v1/jobs/{job}/cancel", headers=quiet.a, timeout=10).raise_for_status()
    counter = 'twofold_http_requests_total{method="POST",route="/v1/jobs/{job_id}/cancel",status="409"}'

    def conflicts() -> float:
        body = httpx.get(
            f"{quiet.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
        ).text
        return next((float(line.split()[-1]) for line in body.splitlines() if line.startswith(counter)), 0.0)

    before = conflicts()
    with tc.Client(base_url=quiet.url, api_key=quiet.a["Authorization"][7:], max_retries=5) as client:
        with pytest.raises(tc.ConflictError):
            client.jobs.cancel(job)
        with pytest.raises(tc.ConflictError):  # retrying a pending job: the other 409 (not counted above)
            client.jobs.retry(quiet.create_job(quiet.a))
    assert conflicts() - before == 1


# --- the operator's surface ------------------------------------------------------------------------------------------
def test_apikey_list_and_revoke(quiet: Quiet) -> None:
    key = quiet.new_key("quiet-revoked-tenant")
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{quiet.url}/v1/jobs", headers=headers, timeout=10).status_code == 200
    listed = json.loads(quiet.cli("apikey", "list", "--json").stdout)
    mine = [k for k in listed if k["prefix"] == key[:10]]
    assert len(mine) == 1 and mine[0]["tenant"] == "quiet-revoked-tenant" and mine[0]["revoked_at"] is None
    assert key not in json.dumps(listed)  # the list never shows tokens
    only = json.loads(quiet.cli("apikey", "list", "--tenant", "quiet-revoked-tenant", "--json").stdout)
    assert [k["id"] for k in only] == [mine[0]["id"]]
    table = quiet.cli("apikey", "list").stdout
    assert mine[0]["id"] in table and "quiet-revoked-tenant" in table

    out = quiet.cli("apikey", "revoke", mine[0]["id"])
    assert out.returncode == 0 and "revoked API key" in out.stdout, out.stderr
    r = httpx.get(f"{quiet.url}/v1/jobs", headers=headers, timeout=10)
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    cookie = {"twofold_dashboard": key}
    page = httpx.get(f"{quiet.url}/dashboard/jobs", cookies=cookie, timeout=10, follow_redirects=False)
    assert page.status_code == 303 and "/dashboard/login" in page.headers["location"]
    assert (
        httpx.get(f"{quiet.url}/v1/jobs", headers=quiet.a, timeout=10).status_code == 200
    )  # others unaffected

    revoked_at = json.loads(quiet.cli("apikey", "list", "--tenant", "quiet-revoked-tenant", "--json").stdout)
    again = quiet.cli("apikey", "revoke", key[:10])  # by prefix, a second time: a no-op
    assert again.returncode == 0
    later = json.loads(quiet.cli("apikey", "list", "--tenant", "quiet-revoked-tenant", "--json").stdout)
    assert later == revoked_at and later[0]["revoked_at"] is not None
    unknown = quiet.cli("apikey", "revoke", "tf_nosuch")
    assert unknown.returncode == 2 and "no API key" in unknown.stderr


def test_metrics_need_the_operator_token_or_show_no_tenant_figures(quiet: Quiet, rel: RelStack) -> None:
    for headers in ({}, quiet.a, {"Authorization": "Bearer wrong"}):
        r = httpx.get(f"{quiet.url}/metrics", headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    assert (
        "twofold_jobs{"
        in httpx.get(
            f"{quiet.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
        ).text
    )
    open_metrics = httpx.get(f"{rel.api_url}/metrics", timeout=10)  # the main API has no token set
    assert open_metrics.status_code == 200 and "twofold_http_requests_total" in open_metrics.text
    assert "twofold_jobs" not in open_metrics.text and "twofold_stage_runs" not in open_metrics.text


# --- the documentation's errors ------------------------------------------------------------------------------------
def test_the_example_job_is_accepted_by_jobs_create(quiet: Quiet) -> None:
    out = quiet.cli(
        "jobs", "create", "-f", "examples/job.yaml", "--json", "--api-key", quiet.a["Authorization"][7:]
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["spec"]["data"]["task"] == "gsm8k" and job["spec"]["sft"]["lr"] == 1e-5
    assert job["spec"]["data"]["path"] == str((quiet.root / "data" / "gsm8k").resolve())  # the server's copy
    assert job["spec"]["student"]["path"] == str((quiet.root / "models" / "Qwen2.5-0.5B-Instruct").resolve())


def test_a_custom_task_without_a_dataset_names_the_dataset_field(quiet: Quiet) -> None:
    spec = rel_spec("http://127.0.0.1:9/v1", data={"task": "custom"})
    for data in ({"task": "custom"}, {"task": "custom", "path": "/srv/questions.jsonl"}):
        r = httpx.post(
            f"{quiet.url}/v1/jobs", headers=quiet.a, json={"spec": {**spec, "data": data}}, timeout=10
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "dataset", r.text
        assert "upload" in r.json()["error"]["message"]


def test_the_sdk_guide_points_at_the_api_not_the_teacher() -> None:
    from twofold.cli.service import serve

    port = next(p.default for p in serve.params if p.name == "port")
    guide = (REPO / "docs" / "sdk.md").read_text()
    assert f"TWOFOLD_BASE_URL=http://localhost:{port}" in guide and "localhost:8000" not in guide
