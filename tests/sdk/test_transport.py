"""The SDK's transport parts against a scripted HTTP server on a loopback port: error mapping, retries with
Retry-After and a reused Idempotency-Key, per-call max_retries, connection errors and timeouts, pagination,
the SSE decoder and a stream that reconnects with Last-Event-ID, and safe checkpoint extraction.
(Cases the real API server cannot produce on demand; the end-to-end tests are in test_api.py.)"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import twofold_client as tc
from tests.sdk.loopback import LoopbackServer, Reply, Seen
from tests.services import free_port
from twofold_client._archive import safe_extract
from twofold_client._base_client import retry_delay


def _client(url: str, **kw: object) -> tc.Client:
    return tc.Client(base_url=url, api_key="k-test", **kw)  # type: ignore[arg-type]


JOB = {"object": "job", "id": "j1", "status": "pending", "created_at": "2026-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("status", "cls", "code"),
    [
        (400, tc.BadRequestError, "invalid_request"),
        (401, tc.AuthenticationError, "unauthenticated"),
        (403, tc.PermissionDeniedError, "forbidden"),
        (404, tc.NotFoundError, "not_found"),
        (409, tc.ConflictError, "conflict"),
        (413, tc.PayloadTooLargeError, "payload_too_large"),
        (422, tc.UnprocessableEntityError, "validation_error"),
        (429, tc.RateLimitError, "rate_limited"),
        (500, tc.InternalServerError, "internal_error"),
        (503, tc.InternalServerError, "unavailable"),
    ],
)
def test_status_maps_to_error_class(status: int, cls: type[tc.APIStatusError], code: str) -> None:
    with (
        LoopbackServer(lambda s: Reply.error(status, code, "nope", "rl.batch_size")) as srv,
        pytest.raises(cls) as info,
        _client(srv.url, max_retries=0) as client,
    ):
        client.jobs.retrieve("j1")
    err = info.value
    assert isinstance(err, tc.APIStatusError) and isinstance(err, tc.APIError)
    assert (err.status_code, err.code, err.param, err.message) == (status, code, "rl.batch_size", "nope")
    assert err.response.status_code == status
    assert len(srv.seen) == 1  # max_retries=0: no retry even for retryable statuses


def test_error_without_json_body_keeps_the_text() -> None:
    with (
        LoopbackServer(lambda s: Reply(502, b"bad gateway", {"Content-Type": "text/plain"})) as srv,
        pytest.raises(tc.InternalServerError) as info,
        _client(srv.url, max_retries=0) as client,
    ):
        client.datasets.list()
    assert info.value.message == "bad gateway" and info.value.code is None


def test_503_is_retried_with_the_same_idempotency_key_then_succeeds() -> None:
    calls = iter(
        [Reply.error(503, "unavailable", "db down", retry_after="0"), Reply.error(500, "internal_error", "x")]
    )

    def handler(seen: Seen) -> Reply:
        return next(calls, Reply(201, JOB))

    with LoopbackServer(handler) as srv, _client(srv.url) as client:
        job = client.jobs.create(preset="smoke")
    assert job.id == "j1" and len(srv.seen) == 3
    keys = {s.headers["idempotency-key"] for s in srv.seen}
    assert len(keys) == 1 and keys.pop().startswith("twofold-")
    assert json.loads(srv.seen[0].body) == {"preset": "smoke"}
    assert srv.seen[0].headers["authorization"] == "Bearer k-test"


def test_each_post_gets_its_own_key_unless_given() -> None:
    with LoopbackServer(lambda s: Reply(201, JOB)) as srv, _client(srv.url) as client:
        client.jobs.create(preset="smoke")
        client.jobs.create(preset="smoke")
        client.jobs.create(preset="smoke", idempotency_key="mine")
    keys = [s.headers["idempotency-key"] for s in srv.seen]
    assert keys[0] != keys[1] and keys[2] == "mine"


def test_retry_after_is_honoured() -> None:
    calls = iter([Reply.error(429, "rate_limited", "slow down", retry_after="1")])
    with LoopbackServer(lambda s: next(calls, Reply(200, JOB))) as srv, _client(srv.url) as client:
        start = time.monotonic()
        client.jobs.retrieve("j1")
        waited = time.monotonic() - start
    assert len(srv.seen) == 2 and 1.0 <= waited < 3.0


def test_backoff_grows_with_jitter_and_caps() -> None:
    delays = [retry_delay(n) for n in range(8)]
    assert 0.375 <= delays[0] <= 0.5 and 0.75 <= delays[1] <= 1.0
    assert all(d <= 8.0 for d in delays) and delays[7] >= 6.0


def test_max_retries_per_client_and_per_call() -> None:
    with (
        LoopbackServer(lambda s: Reply.error(503, "unavailable", "down", retry_after="0")) as srv,
        _client(srv.url, max_retries=3) as client,
    ):
        with pytest.raises(tc.InternalServerError):
            client.jobs.retrieve("j1")
        assert len(srv.seen) == 4
        with pytest.raises(tc.InternalServerError):
            client.with_options(max_retries=0).jobs.retrieve("j1")
        assert len(srv.seen) == 5
        with pytest.raises(tc.InternalServerError):
            client.jobs.retrieve("j1", max_retries=1)
        assert len(srv.seen) == 7


@pytest.mark.parametrize(
    ("status", "code"), [(404, "not_found"), (409, "conflict"), (422, "validation_error")]
)
def test_4xx_other_than_408_and_429_is_not_retried(status: int, code: str) -> None:
    with (
        LoopbackServer(lambda s: Reply.error(status, code, "no")) as srv,
        _client(srv.url, max_retries=3) as client,
        pytest.raises(tc.APIStatusError) as info,
    ):
        client.jobs.cancel("j1")
    assert len(srv.seen) == 1 and info.value.status_code == status


def test_connection_refused_is_a_connection_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        _client(f"http://127.0.0.1:{port}", max_retries=1) as client,
        pytest.raises(tc.APIConnectionError) as info,
    ):
        client.jobs.retrieve("j1")
    assert not isinstance(info.value, tc.APITimeoutError)


def test_slow_server_is_a_timeout_error() -> None:
    def slow(seen: Seen) -> Reply:
        time.sleep(1.0)
        return Reply(200, JOB)

    with (
        LoopbackServer(slow) as srv,
        _client(srv.url, timeout=0.2, max_retries=0) as client,
        pytest.raises(tc.APITimeoutError) as info,
    ):
        client.jobs.retrieve("j1")
    assert isinstance(info.value, tc.APIConnectionError)


def _paged(items: list[dict[str, object]]):
    def handler(seen: Seen) -> Reply:
        limit = int(seen.query.get("limit", 20))
        after = seen.query.get("after")
        start = next(i for i, it in enumerate(items) if it["id"] == after) + 1 if after else 0
        chunk = items[start : start + limit]
        return Reply(200, {"object": "list", "data": chunk, "has_more": start + limit < len(items)})

    return handler


DATASETS = [{"object": "dataset", "id": f"d{i}", "name": f"n{i}", "format": "jsonl"} for i in range(7)]


def test_list_auto_paginates_with_after_cursor() -> None:
    with LoopbackServer(_paged(DATASETS)) as srv, _client(srv.url) as client:
        page = client.datasets.list(limit=2)
        assert [d.id for d in page.data] == ["d0", "d1"] and page.has_more
        assert [d.id for d in page] == [f"d{i}" for i in range(7)]
        assert len(list(page.iter_pages())) == 4
    assert [s.query.get("after") for s in srv.seen[:4]] == [None, "d1", "d3", "d5"]
    assert all(s.query["limit"] == "2" for s in srv.seen)


def test_async_client_paginates_and_maps_errors() -> None:
    async def run(url: str) -> list[str]:
        async with tc.AsyncClient(base_url=url, api_key="k", max_retries=0) as client:
            ids = [d.id async for d in client.datasets.list(limit=3)]
            first = await client.datasets.list(limit=3)
            assert len(first.data) == 3 and first.has_more
            with pytest.raises(tc.NotFoundError):
                await client.datasets.retrieve("missing")
            return ids

    def handler(seen: Seen) -> Reply:
        if seen.path.endswith("/missing"):
            return Reply.error(404, "not_found", "no such dataset", "dataset_id")
        return _paged(DATASETS)(seen)

    with LoopbackServer(handler) as srv:
        assert asyncio.run(run(srv.url)) == [f"d{i}" for i in range(7)]


def test_sse_decoder_follows_the_spec() -> None:
    lines = [": keep-alive", "id: 1", "event: progress", "data: {\"a\":", "data: 1}", "", "retry: 250", "",
             "data:no-space", "", "id: 2", "event: end", ""]  # fmt: skip
    decoder = tc.SSEDecoder()
    events = list(decoder.iter_lines(iter(lines)))
    assert [(e.event, e.id) for e in events] == [("progress", "1"), (None, "1"), ("end", "2")]
    assert events[0].data == '{"a":\n1}' and events[1].data == "no-space"  # `retry:` alone dispatches nothing
    assert decoder.retry == 250 and decoder.last_event_id == "2"


def _sse(seq: int, type_: str = "progress") -> bytes:
    event = {"object": "event", "id": f"e{seq}", "seq": seq, "stage": "sft", "level": "info", "type": type_,
             "message": f"step {seq}", "data": {"step": seq}, "created_at": "2026-01-01T00:00:00Z"}  # fmt: skip
    return f"id: {seq}\nevent: {type_}\ndata: {json.dumps(event)}\n\n".encode()


def test_event_stream_reconnects_with_last_event_id() -> None:
    def handler(seen: Seen) -> Reply:
        headers = {"Content-Type": "text/event-stream"}
        if "last-event-id" not in seen.headers:  # first connection: two events, then the connection drops
            return Reply(200, headers=headers, chunks=[b"retry: 10\n\n", _sse(1), _sse(2)])
        start = int(seen.headers["last-event-id"]) + 1
        return Reply(
            200, headers=headers, chunks=[_sse(n) for n in range(start, 5)] + [b"event: end\ndata: {}\n\n"]
        )

    with (
        LoopbackServer(handler) as srv,
        _client(srv.url) as client,
        client.jobs.events("j1", stream=True) as stream,
    ):
        events = list(stream)
    assert [e.seq for e in events] == [1, 2, 3, 4] and events[2].message == "step 3"
    assert [s.query for s in srv.seen] == [{"stream": "true"}] * 2
    assert srv.seen[1].headers["last-event-id"] == "2"


def test_event_stream_that_keeps_ending_early_gives_up_after_the_reconnect_budget() -> None:
    def handler(seen: Seen) -> Reply:
        return Reply(200, headers={"Content-Type": "text/event-stream"}, chunks=[b"retry: 10\n\n"])

    start = time.monotonic()
    with (
        LoopbackServer(handler) as srv,
        _client(srv.url, reconnect_timeout=1.0) as client,
        pytest.raises(tc.APIConnectionError) as info,
    ):
        list(client.jobs.events("j1", stream=True))
    assert 1.0 <= time.monotonic() - start < 3.0
    assert 3 <= len(srv.seen) <= 12  # 10 ms doubling: a handful of tries, not a busy loop
    assert "reconnect_timeout=1s" in info.value.message


def _outage(down_for: float, then: Callable[[Seen], Reply]) -> Callable[[Seen], Reply]:
    """A server that answers 503 (as a restarting one behind a proxy does) for ``down_for`` seconds."""
    up_at = time.monotonic() + down_for

    def handler(seen: Seen) -> Reply:
        if time.monotonic() < up_at:
            return Reply.error(503, "unavailable", "restarting")
        return then(seen)

    return handler


def test_wait_rides_out_an_outage_longer_than_its_retries() -> None:
    finished = {**JOB, "status": "succeeded"}
    with (
        LoopbackServer(_outage(2.5, lambda s: Reply(200, finished))) as srv,
        _client(srv.url, max_retries=1, reconnect_timeout=30) as client,
    ):
        job = client.jobs.wait("j1", poll_interval=0.05)
    assert job.status == "succeeded" and len(srv.seen) >= 3


def test_wait_gives_up_after_the_reconnect_budget_but_not_on_other_errors() -> None:
    with (
        LoopbackServer(lambda s: Reply.error(503, "unavailable", "down")) as srv,
        _client(srv.url, max_retries=0, reconnect_timeout=1.0) as client,
    ):
        start = time.monotonic()
        with pytest.raises(tc.InternalServerError):
            client.jobs.wait("j1")
        assert 1.0 <= time.monotonic() - start < 3.0
        with pytest.raises(tc.JobWaitTimeout):  # the wait's own timeout still wins over the budget
            client.jobs.wait("j1", timeout=0.3, reconnect_timeout=30)
    with (
        LoopbackServer(lambda s: Reply.error(401, "unauthenticated", "revoked")) as srv,
        _client(srv.url, reconnect_timeout=30) as client,
        pytest.raises(tc.AuthenticationError),
    ):
        client.jobs.wait("j1")
    assert len(srv.seen) == 1


def test_event_stream_resumes_after_connection_refused() -> None:
    """The server goes away (connections refused) and comes back on the same port: the stream reconnects with
    the last event id it saw."""
    port = free_port()

    def first(seen: Seen) -> Reply:
        return Reply(200, headers={"Content-Type": "text/event-stream"}, chunks=[_sse(1), _sse(2)])

    def second(seen: Seen) -> Reply:
        start = int(seen.headers["last-event-id"]) + 1
        chunks = [_sse(n) for n in range(start, 4)] + [b"event: end\ndata: {}\n\n"]
        return Reply(200, headers={"Content-Type": "text/event-stream"}, chunks=chunks)

    got: list[int] = []
    with LoopbackServer(first, port=port) as srv:
        client = _client(srv.url, max_retries=0, reconnect_timeout=30)
        stream = iter(client.jobs.events("j1", stream=True))
        got += [next(stream).seq, next(stream).seq]
    time.sleep(1.0)  # down: every reconnect is refused meanwhile
    with LoopbackServer(second, port=port) as srv2:
        got += [e.seq for e in stream]
    client.close()
    assert got == [1, 2, 3] and srv2.seen[0].headers["last-event-id"] == "2"


def _tarball(members: dict[str, bytes], link: tuple[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("members", "link"),
    [
        ({"ok.json": b"{}", "../evil.txt": b"x"}, None),
        ({"/etc/evil": b"x"}, None),
        ({}, ("lnk", "/etc/passwd")),
    ],
)
def test_unsafe_archives_are_refused_before_writing(
    tmp_path: Path, members: dict[str, bytes], link: tuple[str, str] | None
) -> None:
    archive = tmp_path / "ckpt.tar.gz"
    archive.write_bytes(_tarball(members, link))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(tc.UnsafeArchiveError):
        safe_extract(archive, out)
    assert list(out.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_checkpoint_download_extracts_into_out_dir(tmp_path: Path) -> None:
    # wrapped in one directory, as the server sends it: its contents land in out_dir itself
    blob = _tarball({"rl/config.json": b'{"model_type": "llama"}', "rl/model.safetensors": b"\0" * 64})
    with (
        LoopbackServer(lambda s: Reply(200, blob, {"Content-Type": "application/gzip"})) as srv,
        _client(srv.url) as client,
    ):
        out = client.jobs.checkpoints.download("j1", "c1", out_dir=tmp_path / "model")
    assert srv.seen[0].path == "/v1/jobs/j1/checkpoints/c1/download"
    assert json.loads((out / "config.json").read_text()) == {"model_type": "llama"}
    assert (out / "model.safetensors").stat().st_size == 64 and sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    flat = tmp_path / "flat.tar.gz"  # not wrapped: extracted as is
    flat.write_bytes(_tarball({"config.json": b"{}", "sub/x.bin": b"1"}))
    assert sorted(safe_extract(flat, tmp_path / "flat")) == ["config.json", "sub/x.bin"]


def test_missing_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOFOLD_BASE_URL", raising=False)
    monkeypatch.delenv("TWOFOLD_API_KEY", raising=False)
    with pytest.raises(tc.TwofoldError, match="TWOFOLD_BASE_URL"):
        tc.Client(api_key="k")
    with pytest.raises(tc.TwofoldError, match="TWOFOLD_API_KEY"):
        tc.Client(base_url="http://127.0.0.1:1")
    monkeypatch.setenv("TWOFOLD_BASE_URL", "http://127.0.0.1:1/v1/")
    monkeypatch.setenv("TWOFOLD_API_KEY", "from-env")
    client = tc.Client()
    assert (client.base_url, client.api_key) == ("http://127.0.0.1:1", "from-env")
    with pytest.raises(tc.TwofoldError, match="exactly one of `spec`"):
        client.jobs.create()


def test_a_body_that_is_not_the_object_is_an_api_error() -> None:
    html = Reply(200, b"<html>proxy login</html>", {"Content-Type": "text/html"})
    with (
        LoopbackServer(lambda s: html) as srv,
        _client(srv.url) as client,
        pytest.raises(tc.APIError) as info,
    ):
        client.jobs.retrieve("j1")
    assert "not a Job" in info.value.message and info.value.body == "<html>proxy login</html>"
    with (
        LoopbackServer(lambda s: Reply(200, {"object": "job"})) as srv,  # valid JSON, no id nor status
        _client(srv.url) as client,
        pytest.raises(tc.APIError, match="not a Job"),
    ):
        client.jobs.retrieve("j1")
