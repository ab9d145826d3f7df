"""The built-in teacher server over real HTTP, driven by the unchanged ``openai`` package."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from click.testing import CliRunner

from twofold.cli.teacher import teacher
from twofold.core.models import build_tiny, generate, save_hf

PROMPTS = ["Q: Ana has 7 pens. She gets 5 more. How many pens now?\nA:", "Q: 2+3?\nA:"]


@pytest.fixture(scope="module")
def client(tiny_teacher_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_teacher_url, api_key="unused", max_retries=0, timeout=60)


def _health(url: str) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health").json()


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny-teacher"]
    assert client.models.retrieve("tiny-teacher").id == "tiny-teacher"


def test_completions_list_of_prompts_with_n(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny-teacher", prompt=PROMPTS, n=3, max_tokens=6, temperature=1.0)
    assert r.object == "text_completion" and r.model == "tiny-teacher"
    assert [c.index for c in r.choices] == list(range(6))
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    # byte-level tokenizer: one token per ASCII character, each prompt counted once (not n times)
    assert r.usage.prompt_tokens == sum(len(p) for p in PROMPTS)
    assert 0 < r.usage.completion_tokens <= 6 * 6
    assert len({c.text for c in r.choices}) > 1  # random samples of a random model differ


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def texts(seed: int) -> list[str]:
        r = client.completions.create(model="tiny-teacher", prompt=PROMPTS[1], n=4, max_tokens=8, seed=seed)
        return [c.text for c in r.choices]

    first = texts(7)
    assert texts(7) == first
    assert texts(8) != first
    assert len(set(first)) == 4  # the n samples of one request are distinct draws


def test_temperature_zero_is_greedy_and_stop_cuts(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny-teacher", prompt=PROMPTS[0], n=3, max_tokens=24, temperature=0)
    texts = {c.text for c in r.choices}
    assert len(texts) == 1 and r.choices[0].finish_reason == "length"
    greedy = texts.pop()
    stop = greedy[10:12]
    r = client.completions.create(
        model="tiny-teacher", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=stop
    )
    assert r.choices[0].text == greedy[: greedy.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_chat_completions(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="tiny-teacher", messages=[{"role": "user", "content": PROMPTS[1]}], n=2, max_tokens=5
    )
    assert r.object == "chat.completion"
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.role == "assistant" and isinstance(c.message.content, str) for c in r.choices)
    assert r.usage.prompt_tokens == len(PROMPTS[1])  # the tiny chat template renders a user turn verbatim


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"n": 0}, "n", "invalid_value"),
        ({"temperature": 3.0}, "temperature", "invalid_value"),
        ({"top_p": 0.0}, "top_p", "invalid_value"),
        ({"max_tokens": 100_000}, "max_tokens", "context_length_exceeded"),
        ({"prompt": ""}, "prompt", None),
        ({"extra_body": {"echo": True}}, "echo", None),
    ],
)
def test_invalid_requests_get_openai_style_400(client: openai.OpenAI, kwargs: dict, param: str, code) -> None:
    args = {"model": "tiny-teacher", "prompt": "Q: 1+1?\nA:", "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**args)
    body = err.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error"
    assert body["code"] == code and param in body["message"]


def test_missing_prompt_and_unknown_model(tiny_teacher_url: str) -> None:
    r = httpx.post(f"{tiny_teacher_url}/completions", json={"model": "tiny-teacher", "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = httpx.post(f"{tiny_teacher_url}/completions", json={"model": "gpt-9", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_concurrent_requests_are_answered_and_merged(tiny_teacher_url: str) -> None:
    before = _health(tiny_teacher_url)
    aclient = openai.AsyncOpenAI(base_url=tiny_teacher_url, api_key="unused", max_retries=0)

    async def one(i: int) -> int:
        r = await aclient.completions.create(
            model="tiny-teacher", prompt=[f"Q: {i}?\nA:"] * 2, n=2, max_tokens=32
        )
        return len(r.choices)

    async def main() -> list[int]:
        try:
            return await asyncio.gather(*(one(i) for i in range(6)))
        finally:
            await aclient.close()

    assert asyncio.run(main()) == [4] * 6
    after = _health(tiny_teacher_url)
    assert after["requests"] - before["requests"] == 6
    assert after["rows"] - before["rows"] == 24
    # requests that arrive while a batch runs share the next one
    assert after["batches"] - before["batches"] < 6


def test_serves_a_saved_checkpoint_like_in_process_generation(teacher_server, tmp_path) -> None:
    model, tok = build_tiny("micro", seed=3)
    ckpt = save_hf(model, tok, tmp_path / "my-micro")
    url = teacher_server(ckpt)  # served under the directory's name
    try:
        r = openai.OpenAI(base_url=url, api_key="unused").completions.create(
            model="my-micro", prompt=PROMPTS, max_tokens=12, temperature=0
        )
        expected = generate(model.eval(), tok, PROMPTS, max_new_tokens=12).texts
        assert [c.text for c in r.choices] == expected
    finally:
        teacher_server.stop(url)


def test_cli_requires_exactly_one_model_source() -> None:
    result = CliRunner().invoke(teacher, ["serve"])
    assert result.exit_code == 2 and "exactly one of --model DIR or --tiny" in result.output
    result = CliRunner().invoke(teacher, ["serve", "--model", "/nonexistent/dir"])
    assert result.exit_code == 1 and "not a model directory" in result.output
