"""The API's bounds in-process: the per-line counter of uploads, per-route body limits and the per-key cap on
event streams. (The same bounds against a real server, with timings and memory, are in
tests/reliability/test_bounded_api.py.)"""

from __future__ import annotations

import random

import pytest

from twofold.api.limits import LineCounter, LineTooLong


def _first_long_line(data: bytes, limit: int) -> int | None:
    return next((i for i, line in enumerate(data.split(b"\n"), 1) if len(line) > limit), None)


def test_the_line_counter_names_the_first_long_line_however_the_bytes_arrive() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        limit = rng.randint(1, 20)
        sizes = [rng.choice([0, 1, limit, limit + 1, rng.randint(0, 45)]) for _ in range(rng.randint(1, 8))]
        data = b"\n".join(b"x" * n for n in sizes)
        counter, found, pos = LineCounter(limit), None, 0
        try:
            while pos < len(data):  # pieces of 1 to 50 bytes, as a network delivers them
                step = rng.randint(1, 50)
                counter.feed(data, pos, min(len(data), pos + step))
                pos += step
        except LineTooLong as exc:
            found = int(exc.param.removeprefix("line "))
        assert found == _first_long_line(data, limit), (data, limit)


@pytest.mark.services
def test_a_long_line_is_413_naming_it_and_a_line_at_the_limit_passes(make_api) -> None:
    api = make_api(max_line_bytes=64)
    row = b'{"question": "' + b"q" * 48 + b'"}'  # 64 bytes
    ok = api.upload(api.a, row + b"\n" + row + b"\n")
    assert ok.status_code == 201 and ok.json()["row_count"] == 2
    long = api.upload(api.a, row + b"\n" + row + b"\n" + row[:-2] + b'q"}\n')
    assert long.status_code == 413
    assert long.json()["error"] == {
        "code": "payload_too_large",
        "message": "line 3 is over the 64-byte line limit; each line must be one JSON object",
        "param": "line 3",
    }


@pytest.mark.services
def test_routes_without_a_large_body_take_16_kib(api) -> None:
    job = api.create_job(api.a)
    for path in (f"/v1/jobs/{job['id']}/cancel", f"/v1/jobs/{job['id']}/retry", "/dashboard/logout"):
        r = api.client.post(path, headers=api.a, content=b"x" * (17 << 10))
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", path
    assert api.client.get(f"/v1/jobs/{job['id']}", headers=api.a).json()["status"] == "pending"
    spec = api.client.post(
        "/dashboard/spec", headers=api.a, json={"text": "sft: {lr: 1e-5}\n" + "#" * 50_000}
    )
    assert spec.status_code == 200 and spec.json()["spec"] == {"sft": {"lr": 1e-5}}  # 1 MiB here


@pytest.mark.services
def test_a_key_holds_a_bounded_number_of_event_streams(make_api) -> None:
    api = make_api(max_streams_per_key=2)
    job = api.create_job(api.a)["id"]
    path = f"/v1/jobs/{job}/events?stream=true"
    with (
        api.client.stream("GET", path, headers=api.a) as one,
        api.client.stream("GET", path, headers=api.a) as two,
    ):
        assert one.status_code == two.status_code == 200
        refused = api.client.get(path, headers=api.a)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
        assert refused.json()["error"]["param"] == "stream"
        other = api.create_job(api.b)["id"]  # another key is not affected
        with api.client.stream("GET", f"/v1/jobs/{other}/events?stream=true", headers=api.b) as theirs:
            assert theirs.status_code == 200
            api.client.post(f"/v1/jobs/{other}/cancel", headers=api.b)
            assert b"event: end" in b"".join(theirs.iter_bytes())
        api.client.post(f"/v1/jobs/{job}/cancel", headers=api.a)
        assert b"event: end" in b"".join(one.iter_bytes())
    assert api.client.app.state.event_hub.open_streams == 0  # every slot was given back
    again = api.client.get(path, headers=api.a)
    assert again.status_code == 200 and again.text.endswith('event: end\ndata: {"object": "end"}\n\n')
