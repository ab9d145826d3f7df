"""core.teacher against real HTTP servers: the built-in teacher server, and a scripted flaky one on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import httpx2
import openai
import pytest

from twofold.core.configs import ConfigError, TeacherConfig
from twofold.core.records import TeacherSample
from twofold.core.tasks import Item, arithmetic
from twofold.core.teacher import (
    TeacherClient,
    TeacherError,
    TeacherUnavailable,
    TeacherUsage,
    check_sync,
    greedy_sync,
    sample_sync,
)

ITEMS = arithmetic.load("train", size=5, seed=0)
TASK = {"build_prompt": arithmetic.build_prompt, "extract_answer": arithmetic.extract_answer}


def _cfg(url: str, **kw) -> TeacherConfig:
    base = {"base_url": url, "model": "tiny-teacher", "max_tokens": 8, "concurrency": 2, "backoff_s": 0.01}
    return TeacherConfig(**{**base, **kw})


def _server_requests(url: str) -> int:
    return httpx.get(url.removesuffix("/v1") + "/health").json()["requests"]


class Collect:
    """A sink that records every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[list[TeacherSample]] = []

    def __call__(self, samples: list[TeacherSample]) -> None:
        self.batches.append(samples)

    @property
    def samples(self) -> list[TeacherSample]:
        return [s for batch in self.batches for s in batch]


# --- against the built-in server ---------------------------------------------------------------------------------
def test_sample_draws_n_per_temperature_with_unique_keys(tiny_teacher_url: str) -> None:
    cfg = _cfg(tiny_teacher_url, temperatures=(0.5, 1.0), n=3, prompts_per_request=2)
    sink, progress, events = Collect(), [], []
    before = _server_requests(tiny_teacher_url)
    usage = sample_sync(
        cfg,
        ITEMS,
        sink=sink,
        on_progress=lambda d, t: progress.append((d, t)),
        on_event=lambda *e: events.append(e),
        **TASK,
    )
    keys = [s.key for s in sink.samples]
    assert sorted(keys) == sorted((it.id, t, i) for it in ITEMS for t in (0.5, 1.0) for i in range(3))
    assert len(set(keys)) == 30 and usage.samples == 30
    # 5 questions in batches of 2 -> 3 requests per temperature; nothing retried
    assert usage.requests == 6 and usage.retries == 0 and usage.errors == 0 and not events
    assert _server_requests(tiny_teacher_url) - before == 6
    assert len(sink.batches) == 6 and progress[-1] == (30, 30)
    assert all(s.answer == arithmetic.extract_answer(s.text) for s in sink.samples)
    assert all(s.finish_reason in ("stop", "length") for s in sink.samples)
    # per-sample token counts add up to the endpoint's totals
    assert sum(s.prompt_tokens for s in sink.samples) == usage.prompt_tokens > 0
    assert sum(s.completion_tokens for s in sink.samples) == usage.completion_tokens > 0


def test_skipped_keys_are_never_requested_again(tiny_teacher_url: str) -> None:
    cfg = _cfg(tiny_teacher_url, temperatures=(0.5, 1.0), n=3, prompts_per_request=2)
    a, b = ITEMS[0].id, ITEMS[1].id
    skip = {(a, 0.5, 0), (a, 0.5, 1), (a, 0.5, 2), (b, 1.0, 1)}
    sink = Collect()
    before = _server_requests(tiny_teacher_url)
    usage = sample_sync(cfg, ITEMS, sink=sink, skip=skip, **TASK)
    got = {s.key for s in sink.samples}
    full = {(it.id, t, i) for it in ITEMS for t in (0.5, 1.0) for i in range(3)}
    assert got == full - skip and len(sink.samples) == 26
    assert {s.index for s in sink.samples if s.question_id == b and s.temperature == 1.0} == {0, 2}
    # t=0.5: 4 questions -> 2 requests; t=1.0: 4 questions missing 3 -> 2 requests, 1 missing 2 -> 1 request
    assert usage.requests == 5 == _server_requests(tiny_teacher_url) - before


def test_nothing_requested_when_everything_is_held(tiny_teacher_url: str) -> None:
    cfg = _cfg(tiny_teacher_url, temperatures=(0.7,), n=2)
    sink = Collect()
    usage = sample_sync(
        cfg, ITEMS, sink=sink, skip={(it.id, 0.7, i) for it in ITEMS for i in range(2)}, **TASK
    )
    assert usage.requests == 0 and sink.batches == []


def test_seeded_sampling_is_reproducible(tiny_teacher_url: str) -> None:
    cfg = _cfg(tiny_teacher_url, temperatures=(1.0,), n=2, prompts_per_request=3, seed=11)
    runs = []
    for _ in range(2):
        sink = Collect()
        sample_sync(cfg, ITEMS, sink=sink, **TASK)
        runs.append({s.key: s.text for s in sink.samples})
    assert runs[0] == runs[1] and len(runs[0]) == 10


def test_chat_api_sends_one_question_per_request(tiny_teacher_url: str) -> None:
    cfg = _cfg(tiny_teacher_url, api="chat", temperatures=(1.0,), n=2)
    sink = Collect()
    usage = sample_sync(cfg, ITEMS[:3], sink=sink, **TASK)
    assert usage.requests == 3 and len(sink.samples) == 6
    assert {s.key for s in sink.samples} == {(it.id, 1.0, i) for it in ITEMS[:3] for i in range(2)}


def test_async_sink_and_greedy_matches_openai(tiny_teacher_url: str) -> None:
    cfg = _cfg(tiny_teacher_url, temperatures=(1.0,), n=1, prompts_per_request=2)
    prompts = [arithmetic.build_prompt(it) for it in ITEMS]
    seen: list[int] = []

    async def sink(samples: list[TeacherSample]) -> None:
        await asyncio.sleep(0)
        seen.append(len(samples))

    async def main() -> list[str]:
        async with TeacherClient(cfg) as client:
            await client.sample(ITEMS, sink=sink, **TASK)
            return await client.greedy(prompts, max_tokens=10)

    texts = asyncio.run(main())
    assert sorted(seen) == [1, 2, 2]
    ref = openai.OpenAI(base_url=tiny_teacher_url, api_key="x").completions.create(
        model="tiny-teacher", prompt=prompts, max_tokens=10, temperature=0
    )
    assert texts == [c.text for c in ref.choices]
    assert greedy_sync(cfg, prompts[:2], max_tokens=10) == texts[:2]


def test_check_lists_models_and_warns_on_unknown_model(tiny_teacher_url: str) -> None:
    assert check_sync(_cfg(tiny_teacher_url)) == ["tiny-teacher"]
    events: list[tuple] = []
    check_sync(_cfg(tiny_teacher_url, model="other"), on_event=lambda *e: events.append(e))
    assert [(e[0], e[1]) for e in events] == [("warning", "teacher_model_missing")]
    assert "'other'" in events[0][2] and "tiny-teacher" in events[0][2]


# --- against a scripted flaky endpoint ---------------------------------------------------------------------------
class Script:
    """What the flaky server does for each successive POST ("ok" once the list runs out), and what it saw."""

    def __init__(self, *actions: str) -> None:
        self.actions = list(actions)
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.get_status = 200
        self.get_body: bytes | None = None  # replaces the model list
        self.location = ""  # sent with 3xx answers
        self.paths: list[str] = []  # every request line's path, GET and POST
        self.headers: list[dict[str, str]] = []  # every request's headers, lower-cased names
        self.peers: set[int] = set()  # client ports: one per connection
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()


def _ok(body: dict) -> dict:
    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
    n = body.get("n", 1)
    choices = [
        {"index": p * n + j, "text": f"so #### {p}{j}", "finish_reason": "stop", "logprobs": None}
        for p in range(len(prompts))
        for j in range(n)
    ]
    return {
        "choices": choices,
        "usage": {"prompt_tokens": 10 * len(prompts), "completion_tokens": 3 * len(choices)},
    }


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _seen(self) -> None:
            script.paths.append(self.path)
            script.headers.append({k.lower(): v for k, v in self.headers.items()})
            script.peers.add(self.client_address[1])

        def do_GET(self) -> None:
            self._seen()
            if script.get_status != 200:
                self._send(
                    script.get_status,
                    b'{"error": {"message": "invalid api key"}}',
                    {"Location": script.location} if script.location else None,
                )
                return
            listing = json.dumps({"object": "list", "data": [{"id": "tiny-teacher"}]}).encode()
            self._send(200, script.get_body if script.get_body is not None else listing)

        def do_POST(self) -> None:
            self._seen()
            with script.lock:
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            try:
                self._post()
            finally:
                with script.lock:
                    script.in_flight -= 1

        def _post(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.bodies.append(body)
            script.auth.append(self.headers.get("Authorization"))
            action = script.actions.pop(0) if script.actions else "ok"
            if action == "hang":
                time.sleep(2.0)  # past the client's timeout; the client has given up by now
                return
            if action == "slow":
                time.sleep(0.1)
                action = "ok"
            if (
                action == "drip"
            ):  # headers at once, then a byte at a time: each read is quick, the whole is not
                payload = json.dumps(_ok(body)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    for i in range(len(payload)):
                        self.wfile.write(payload[i : i + 1])
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:  # the client gave up
                    pass
                return
            if action == "ok":
                self._send(200, json.dumps(_ok(body)).encode())
            elif action == "badjson":
                self._send(200, b'{"choices": [')
            elif action == "short":
                reply = _ok(body)
                reply["choices"] = reply["choices"][:-1]
                self._send(200, json.dumps(reply).encode())
            elif action in ("badindex", "notext"):
                reply = _ok(body)
                if action == "badindex":
                    reply["choices"][-1]["index"] = 0
                else:
                    del reply["choices"][0]["text"]
                self._send(200, json.dumps(reply).encode())
            elif action.startswith("429ms"):
                self._send(429, b'{"error": "slow down"}', {"retry-after-ms": action.split(":")[1]})
            elif action.startswith("429"):
                self._send(429, b'{"error": "slow down"}', {"Retry-After": action.split(":")[1]})
            elif action in ("301", "302", "307", "308"):
                self._send(int(action), b"moved", {"Location": script.location})
            elif action == "400":
                echo = f"bad temperature; you sent {self.headers.get('Authorization')}"
                self._send(400, json.dumps({"error": {"message": echo}}).encode())
            else:
                self._send(int(action), b'{"error": "upstream trouble"}')

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 resets a burst of new connections


@contextlib.contextmanager
def _serving(script: Script) -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def flaky() -> Iterator[tuple[str, Script]]:
    """A scripted endpoint on a free loopback port: ``(base_url, script)``."""
    script = Script()
    with _serving(script) as url:
        yield url, script


@pytest.fixture
def elsewhere() -> Iterator[tuple[str, Script]]:
    """A second scripted endpoint: where a redirect points, which must never be reached."""
    script = Script()
    with _serving(script) as url:
        yield url, script


def _run(cfg: TeacherConfig, items: list[Item] = ITEMS[:2]) -> tuple[Collect, object, list[tuple]]:
    sink, events = Collect(), []
    usage = sample_sync(cfg, items, sink=sink, on_event=lambda *e: events.append(e), **TASK)
    return sink, usage, events


def test_retries_5xx_then_succeeds(flaky) -> None:
    url, script = flaky
    script.actions = ["500", "502"]
    sink, usage, events = _run(_cfg(url, temperatures=(1.0,), n=2, concurrency=1))
    assert len(sink.samples) == 4 and sink.samples[0].answer == "0"
    assert (usage.requests, usage.retries, usage.errors) == (3, 2, 2)
    assert len(script.bodies) == 3
    assert [(e[0], e[1]) for e in events] == [("warning", "teacher_retry")] * 2
    assert events[0][3]["status"] == 500 and "HTTP 500" in events[0][2] and "retry 1/5" in events[0][2]


def test_honours_retry_after(flaky) -> None:
    url, script = flaky
    script.actions = ["429:1"]
    t0 = time.monotonic()
    sink, usage, events = _run(_cfg(url, temperatures=(1.0,), n=1, backoff_s=0.01))
    assert time.monotonic() - t0 >= 0.95  # the header, not the 10 ms backoff, set the wait
    assert usage.retries == 1 and events[0][3]["delay_s"] == 1.0 and len(sink.samples) == 2


def test_retries_a_hang_past_the_timeout(flaky) -> None:
    url, script = flaky
    script.actions = ["hang"]
    t0 = time.monotonic()
    sink, usage, events = _run(_cfg(url, temperatures=(1.0,), n=1, timeout_s=0.5))
    assert 0.5 <= time.monotonic() - t0 < 2.0
    assert usage.retries == 1 and "within 0.5s" in events[0][2] and len(sink.samples) == 2


@pytest.mark.parametrize("bad", ["badjson", "short"])
def test_retries_malformed_responses(flaky, bad: str) -> None:
    url, script = flaky
    script.actions = [bad]
    sink, usage, events = _run(_cfg(url, temperatures=(1.0,), n=2))
    assert usage.retries == 1 and "malformed" in events[0][2] and len(sink.samples) == 4


def test_400_fails_at_once_without_leaking_the_key(flaky, caplog: pytest.LogCaptureFixture) -> None:
    url, script = flaky
    script.actions = ["400"]
    events: list[tuple] = []
    with caplog.at_level("WARNING", logger="twofold.teacher"), pytest.raises(TeacherError) as err:
        sample_sync(
            _cfg(url, api_key="sk-secret-123", concurrency=1),
            ITEMS[:1],
            sink=Collect(),
            on_event=lambda *e: events.append(e),
            **TASK,
        )
    assert not isinstance(err.value, TeacherUnavailable)
    assert err.value.status == 400 and "HTTP 400" in str(err.value)
    # the remote body (which echoes the key) reaches the operator log, masked, and never the error
    assert "bad temperature" not in str(err.value) and "Bearer" not in str(err.value)
    assert "bad temperature; you sent Bearer ***" in caplog.text and "sk-secret-123" not in caplog.text
    assert script.auth == ["Bearer sk-secret-123"] and len(script.bodies) == 1 and events == []


def test_payload_always_has_max_tokens_and_distinct_seeds(flaky) -> None:
    url, script = flaky
    cfg = _cfg(
        url, temperatures=(0.5, 1.0), n=2, prompts_per_request=2, seed=100, stop=("\n\n",), max_tokens=33
    )
    _run(cfg, ITEMS)
    assert len(script.bodies) == 6
    assert all(
        b["max_tokens"] == 33 and b["stop"] == ["\n\n"] and b["model"] == "tiny-teacher"
        for b in script.bodies
    )
    assert sorted(b["seed"] for b in script.bodies) == list(range(100, 106))
    assert sorted(b["temperature"] for b in script.bodies) == [0.5] * 3 + [1.0] * 3


def test_sink_failure_aborts_sampling(flaky) -> None:
    url, script = flaky

    def sink(samples: list[TeacherSample]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        sample_sync(_cfg(url, concurrency=1, prompts_per_request=1), ITEMS, sink=sink, **TASK)
    assert len(script.bodies) == 1  # nothing more is requested once a response cannot be persisted


def test_persistent_5xx_exhausts_retries(flaky) -> None:
    url, script = flaky
    script.actions = ["503"] * 10
    with pytest.raises(TeacherUnavailable, match=r"failed after 3 attempt\(s\).*HTTP 503"):
        _run(_cfg(url, max_retries=2, concurrency=1, temperatures=(1.0,)), ITEMS[:1])
    assert len(script.bodies) == 3


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_down_endpoint_raises_unavailable() -> None:
    url = _closed_port_url()
    sink, events = Collect(), []
    with pytest.raises(TeacherUnavailable) as err:
        sample_sync(
            _cfg(url, max_retries=2, temperatures=(1.0,)),
            ITEMS[:1],
            sink=sink,
            on_event=lambda *e: events.append(e),
            **TASK,
        )
    assert (
        f"{url}/completions" in str(err.value)
        and "3 attempt(s)" in str(err.value)
        and "ConnectError" in str(err.value)
    )
    assert len(events) == 2 and sink.batches == []


def test_health_check_fails_fast_on_a_closed_port() -> None:
    url = _closed_port_url()
    t0 = time.monotonic()
    with pytest.raises(TeacherUnavailable, match="unreachable") as err:
        check_sync(_cfg(url))
    assert url in str(err.value) and time.monotonic() - t0 < 5
    with pytest.raises(TeacherUnavailable):
        check_sync(_cfg(url), wait_s=0.6)  # keeps polling for a starting server, then gives up
    assert time.monotonic() - t0 >= 0.6


def test_health_check_reports_auth_failures(flaky) -> None:
    url, script = flaky
    script.get_status = 401
    with pytest.raises(TeacherUnavailable, match=r"HTTP 401 \(check teacher.api_key\)"):
        check_sync(_cfg(url, api_key="sk-secret-123"))


# --- retries, budgets and usage ----------------------------------------------------------------------------------
def test_honours_retry_after_ms(flaky) -> None:
    url, script = flaky
    script.actions = ["429ms:300"]
    t0 = time.monotonic()
    sink, usage, events = _run(_cfg(url, temperatures=(1.0,), n=1, backoff_s=5.0, concurrency=1))
    assert time.monotonic() - t0 >= 0.28  # the header, not the 5 s backoff, set the wait
    assert events[0][3]["delay_s"] == 0.3 and events[0][3]["status"] == 429 and len(sink.samples) == 2


def test_backoff_comes_from_the_config(flaky) -> None:
    url, script = flaky
    script.actions = ["500", "502", "503"]
    t0 = time.monotonic()
    sink, usage, events = _run(
        _cfg(url, temperatures=(1.0,), n=1, concurrency=1, backoff_s=0.2, backoff_max_s=0.3)
    )
    delays = [e[3]["delay_s"] for e in events]
    # 0.2, 0.4 capped at 0.3, 0.8 capped at 0.3; each with jitter in [0.5, 1]
    assert [e[3]["attempt"] for e in events] == [1, 2, 3] and len(sink.samples) == 2
    assert 0.1 <= delays[0] <= 0.2 and all(0.15 <= d <= 0.3 for d in delays[1:])
    assert time.monotonic() - t0 >= sum(delays)


def test_a_retry_after_past_two_minutes_is_not_waited_for(flaky) -> None:
    url, script = flaky
    script.actions = ["429:121"]
    events: list[tuple] = []
    with pytest.raises(TeacherUnavailable, match=r"failed after 1 attempt\(s\); last error: HTTP 429"):
        sample_sync(
            _cfg(url, concurrency=1), ITEMS[:1], sink=Collect(), on_event=lambda *e: events.append(e), **TASK
        )
    assert len(script.bodies) == 1 and events == []


@pytest.mark.parametrize("bad", ["badindex", "notext"])
def test_retries_bodies_of_the_wrong_shape(flaky, bad: str) -> None:
    url, script = flaky
    script.actions = [bad]
    sink, usage, events = _run(_cfg(url, temperatures=(1.0,), n=2, concurrency=1))
    assert (usage.requests, usage.retries, usage.errors) == (2, 1, 1) and len(sink.samples) == 4
    assert events[0][3]["status"] == 200 and "malformed response" in events[0][3]["reason"]
    assert len({s.key for s in sink.samples}) == 4


def test_malformed_bodies_and_http_errors_share_one_retry_budget(flaky) -> None:
    url, script = flaky
    script.actions = ["short", "500", "badjson", "ok"]
    events: list[tuple] = []
    with pytest.raises(
        TeacherUnavailable, match=r"failed after 3 attempt\(s\); last error: malformed JSON body"
    ):
        sample_sync(
            _cfg(url, max_retries=2, concurrency=1, temperatures=(1.0,), n=2),
            ITEMS[:1],
            sink=Collect(),
            on_event=lambda *e: events.append(e),
            **TASK,
        )
    assert len(script.bodies) == 3
    assert [(e[3]["attempt"], e[3]["status"]) for e in events] == [(1, 200), (2, 500)]


def test_usage_totals_are_exact(flaky) -> None:
    url, script = flaky
    script.actions = ["500", "429:0", "short", "ok", "502"]
    cfg = _cfg(url, temperatures=(0.5, 1.0), n=2, prompts_per_request=2, concurrency=1)
    sink, usage, events = _run(cfg, ITEMS)
    # 5 questions in batches of 2 -> 3 requests per temperature, plus 4 failed attempts
    assert (usage.requests, usage.retries, usage.errors) == (10, 4, 4) == (len(script.bodies), len(events), 4)
    assert usage.samples == len(sink.samples) == 20
    # the endpoint's usage of the 6 answered requests: 10 per prompt, 3 per choice
    assert usage.prompt_tokens == 10 * 10 == sum(s.prompt_tokens for s in sink.samples)
    assert usage.completion_tokens == 3 * 20 == sum(s.completion_tokens for s in sink.samples)


@pytest.mark.parametrize(
    ("status", "hint"), [("401", "check teacher.api_key"), ("404", "check teacher.model")]
)
def test_other_4xx_fail_at_once(flaky, status: str, hint: str) -> None:
    url, script = flaky
    script.actions = [status]
    events: list[tuple] = []
    with pytest.raises(TeacherError) as err:
        _run(_cfg(url, concurrency=1, temperatures=(1.0,)), ITEMS[:1])
    assert not isinstance(err.value, TeacherUnavailable) and err.value.status == int(status)
    assert f"HTTP {status} ({hint})" in str(err.value) and len(script.bodies) == 1 and events == []


def test_a_slow_drip_is_cut_at_the_deadline_and_retried(flaky) -> None:
    url, script = flaky
    script.actions = ["drip"]
    t0 = time.monotonic()
    sink, usage, events = _run(_cfg(url, temperatures=(1.0,), n=1, timeout_s=0.6, concurrency=1))
    assert 0.6 <= time.monotonic() - t0 < 3.0  # the body alone would take > 5 s at one byte per 50 ms
    assert usage.retries == 1 and events[0][3]["reason"] == "no complete response within 0.6s"
    assert len(sink.samples) == 2


# --- what reaches the endpoint and what comes back from it --------------------------------------------------------
def test_remote_text_stays_out_of_errors_and_events(flaky) -> None:
    url, script = flaky
    script.actions = ["503"] * 3
    events: list[tuple] = []
    with pytest.raises(TeacherUnavailable) as err:
        sample_sync(
            _cfg(url, max_retries=2, concurrency=1),
            ITEMS[:1],
            sink=Collect(),
            on_event=lambda *e: events.append(e),
            **TASK,
        )
    shown = [str(err.value)] + [e[2] + json.dumps(e[3]) for e in events]
    assert len(events) == 2 and all("HTTP 503" in text for text in shown)
    assert not any("upstream trouble" in text for text in shown)
    script.get_status = 401
    with pytest.raises(TeacherUnavailable) as err:
        check_sync(_cfg(url))
    assert "HTTP 401" in str(err.value) and "invalid api key" not in str(err.value)


def test_a_health_check_body_that_is_not_a_model_list_is_retried_then_named(flaky) -> None:
    url, script = flaky
    script.get_body = b'{"secret": "internal metrics"}'
    events: list[tuple] = []
    with pytest.raises(TeacherUnavailable) as err:
        check_sync(_cfg(url, max_retries=1), on_event=lambda *e: events.append(e))
    assert "did not return an OpenAI model list" in str(err.value) and "internal" not in str(err.value)
    assert len(script.paths) == 2 and [e[1] for e in events] == ["teacher_retry"]


@pytest.mark.parametrize("status", ["301", "302", "307", "308"])
def test_redirects_are_not_followed(flaky, elsewhere, status: str) -> None:
    url, script = flaky
    other_url, other = elsewhere
    script.actions = [status]
    script.location = f"{other_url}/completions"
    with pytest.raises(TeacherError) as err:
        _run(_cfg(url, concurrency=1, temperatures=(1.0,)), ITEMS[:1])
    assert err.value.status == int(status) and "redirects are not followed" in str(err.value)
    script.get_status, script.location = int(status), f"{other_url}/models"
    with pytest.raises(TeacherUnavailable, match="redirects are not followed"):
        check_sync(_cfg(url))
    assert len(script.paths) == 2 and other.paths == []


@pytest.mark.parametrize("suffix", ["?", "#", "?x=1"])
def test_a_base_url_with_a_query_or_fragment_cannot_steer_the_health_check(flaky, suffix: str) -> None:
    url, script = flaky
    internal = url.removesuffix("/v1") + "/internal" + suffix
    with pytest.raises(ConfigError) as err:
        _cfg(internal)
    assert err.value.param == "teacher.base_url"
    cfg = _cfg(url)
    object.__setattr__(cfg, "base_url", internal)  # past the config check: the client refuses on its own
    with pytest.raises(TeacherError, match="must not contain"):
        check_sync(cfg)
    assert script.paths == []


def test_the_endpoint_hears_no_credentials_from_the_environment(
    flaky, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, script = flaky
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-api")
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-env-admin")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-env")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-env")
    monkeypatch.setenv(
        "OPENAI_CUSTOM_HEADERS", "X-Operator-Token: env-token\nAuthorization: Bearer sk-env-hdr"
    )
    check_sync(_cfg(url))
    _run(_cfg(url, temperatures=(1.0,), n=1, concurrency=1), ITEMS[:1])
    _run(_cfg(url, api_key="sk-job", temperatures=(1.0,), n=1, concurrency=1), ITEMS[:1])
    seen = json.dumps(script.headers)
    assert "env" not in seen and [h.get("authorization") for h in script.headers] == [
        None,
        None,
        "Bearer sk-job",
    ]
    assert not any(k.startswith("openai-") for h in script.headers for k in h)


# --- one HTTP client, bounded --------------------------------------------------------------------------------------
class _Recording(httpx2.AsyncBaseTransport):
    """A transport that a caller (an egress policy) hands in: records every request, then sends it."""

    def __init__(self) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.urls: list[str] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.urls.append(str(request.url))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_every_request_goes_through_the_given_transport(flaky) -> None:
    url, script = flaky
    script.actions = ["500"]
    transport = _Recording()

    async def main() -> TeacherUsage:
        async with TeacherClient(_cfg(url, temperatures=(1.0,), n=1), transport=transport) as client:
            await client.check()
            usage = await client.sample(ITEMS[:3], sink=Collect(), **TASK)
            await client.greedy(["1 + 1 ="], max_tokens=4)
            return usage

    usage = asyncio.run(main())
    # the health check, one sampling request and its retry, one greedy request
    assert len(transport.urls) == len(script.paths) == 1 + usage.requests + 1 == 4
    assert transport.urls[0] == f"{url}/models" and set(transport.urls[1:]) == {f"{url}/completions"}


def test_in_flight_requests_and_connections_are_bounded(flaky) -> None:
    url, script = flaky
    script.actions = ["slow"] * 12
    items = arithmetic.load("train", size=12, seed=1)
    sink, usage, _ = _run(_cfg(url, temperatures=(1.0,), n=1, prompts_per_request=1, concurrency=3), items)
    assert usage.requests == 12 and len(sink.samples) == 12
    assert script.max_in_flight == 3 and len(script.peers) == 3  # connections are reused, never more than 3


def test_a_concurrency_past_one_pool_is_served_without_waiting_for_connections(flaky) -> None:
    url, script = flaky
    script.actions = ["slow"] * 120
    items = arithmetic.load("train", size=120, seed=1)
    # 40 workers on two pools of 20: a worker never waits for a connection (a wait past the timeout would retry)
    cfg = _cfg(url, temperatures=(1.0,), n=1, prompts_per_request=1, concurrency=40, timeout_s=5.0)
    sink, usage, events = _run(cfg, items)
    assert (usage.requests, usage.retries, len(sink.samples), events) == (120, 0, 120, [])
    assert script.max_in_flight <= 40 and len(script.peers) <= 40


def test_prompts_are_built_only_as_requests_are_sent(flaky) -> None:
    url, script = flaky
    items = arithmetic.load("train", size=50, seed=2)
    built: list[str] = []

    def build_prompt(item: Item) -> str:
        built.append(item.id)
        return arithmetic.build_prompt(item)

    def sink(samples: list[TeacherSample]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        sample_sync(
            _cfg(url, concurrency=2, prompts_per_request=1, temperatures=(1.0,)),
            items,
            build_prompt=build_prompt,
            extract_answer=arithmetic.extract_answer,
            sink=sink,
        )
    assert len(script.bodies) <= 2 and len(built) <= 2  # not the 50 of the whole plan
