"""core.teacher against real HTTP servers: the built-in teacher server, and a scripted flaky one on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest

from twofold.core.configs import TeacherConfig
from twofold.core.records import TeacherSample
from twofold.core.tasks import Item, arithmetic
from twofold.core.teacher import (
    TeacherClient,
    TeacherError,
    TeacherUnavailable,
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
    """What the flaky server does for each successive POST ("ok" once the list runs out)."""

    def __init__(self, *actions: str) -> None:
        self.actions = list(actions)
        self.bodies: list[dict] = []
        self.auth: list[str | None] = []
        self.get_status = 200


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
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if script.get_status != 200:
                self._send(script.get_status, b'{"error": {"message": "invalid api key"}}')
                return
            self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny-teacher"}]}).encode())

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.bodies.append(body)
            script.auth.append(self.headers.get("Authorization"))
            action = script.actions.pop(0) if script.actions else "ok"
            if action == "hang":
                time.sleep(2.0)  # past the client's timeout; the client has given up by now
                return
            if action == "ok":
                self._send(200, json.dumps(_ok(body)).encode())
            elif action == "badjson":
                self._send(200, b'{"choices": [')
            elif action == "short":
                reply = _ok(body)
                reply["choices"] = reply["choices"][:-1]
                self._send(200, json.dumps(reply).encode())
            elif action.startswith("429"):
                self._send(429, b'{"error": "slow down"}', {"Retry-After": action.split(":")[1]})
            elif action == "400":
                echo = f"bad temperature; you sent {self.headers.get('Authorization')}"
                self._send(400, json.dumps({"error": {"message": echo}}).encode())
            else:
                self._send(int(action), b'{"error": "upstream trouble"}')

    return Handler


@pytest.fixture
def flaky() -> Iterator[tuple[str, Script]]:
    """A scripted endpoint on a free loopback port: ``(base_url, script)``."""
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", script
    server.shutdown()
    server.server_close()


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


def test_400_fails_at_once_without_leaking_the_key(flaky) -> None:
    url, script = flaky
    script.actions = ["400"]
    events: list[tuple] = []
    with pytest.raises(TeacherError) as err:
        sample_sync(
            _cfg(url, api_key="sk-secret-123", concurrency=1),
            ITEMS[:1],
            sink=Collect(),
            on_event=lambda *e: events.append(e),
            **TASK,
        )
    assert not isinstance(err.value, TeacherUnavailable)
    assert err.value.status == 400 and "HTTP 400" in str(err.value) and "bad temperature" in str(err.value)
    assert "sk-secret-123" not in str(err.value) and "Bearer ***" in str(err.value)
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
