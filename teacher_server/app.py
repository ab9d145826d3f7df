"""The built-in teacher server: a transformers causal LM behind the OpenAI HTTP protocol.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions`` (prompt string or list, ``n``,
``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``), ``POST /v1/chat/completions`` (messages rendered
with the tokenizer's chat template, or joined by newlines when it has none) and ``GET /health``. The ``openai``
Python package works against it unchanged. Errors come back OpenAI-style:
``{"error": {"message", "type", "param", "code"}}`` (400 for invalid requests, 404 for an unknown model).

Generation runs in one worker thread (torch generation is not re-entrant), fed by a queue. While a batch runs,
new requests wait; the next batch merges waiting requests with identical sampling parameters (and no seed: a
seeded request owns its random stream) up to ``max_batch_size`` rows. Completions for ``P`` prompts with ``n``
samples each come back with ``index = prompt_idx * n + j``, as OpenAI and vLLM do.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.models import build_tiny, generate, load_causal_lm, on_device, pick_device
from twofold.teacher_server.process import READY_BANNER

#: Default completion budget of a chat request that sets none (OpenAI would use the whole context).
CHAT_DEFAULT_MAX_TOKENS = 1024
MAX_N = 128


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        """The OpenAI-style JSON response for this error."""
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# --- request schemas ---------------------------------------------------------------------------------------------
class _SamplingRequest(BaseModel):
    # Unknown OpenAI parameters (user, presence_penalty, ...) are accepted and ignored, as vLLM does.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int | None = Field(None, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions`` body."""

    prompt: str | list[str]
    echo: bool | None = None
    logprobs: int | None = None


class ChatMessage(BaseModel):
    """One chat message; ``content`` may be a string or a list of ``{"type": "text", "text": ...}`` parts."""

    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_SamplingRequest):
    """``POST /v1/chat/completions`` body."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None


# --- the generation engine ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingParams:
    """What must match for two requests to share a generation batch."""

    temperature: float
    top_p: float
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None


@dataclass
class Completion:
    """One generated row."""

    text: str
    finish_reason: str  # "stop" | "length"
    tokens: int


@dataclass
class _Job:
    rows: list[str]
    params: SamplingParams
    future: asyncio.Future[list[Completion]]


@dataclass
class EngineStats:
    """Counters shown on ``/health``."""

    requests: int = 0
    batches: int = 0
    rows: int = 0


@dataclass
class Engine:
    """Serialises generation onto one worker thread and merges compatible waiting requests into one batch."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    max_batch_size: int = 256
    stats: EngineStats = field(default_factory=EngineStats)

    def __post_init__(self) -> None:
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-generate")
        self._device = next(self.model.parameters()).device

    async def generate(self, rows: list[str], params: SamplingParams) -> list[Completion]:
        """Generate one completion per row (rows may repeat a prompt to draw several samples)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())
        assert self._wakeup is not None
        job = _Job(rows, params, loop.create_future())
        self._pending.append(job)
        self.stats.requests += 1
        self._wakeup.set()
        return await job.future

    async def close(self) -> None:
        """Stop the batching loop and the worker thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            batch = self._take_batch()
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self.stats.batches += 1
            self.stats.rows += sum(len(job.rows) for job in batch)
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run, [job.rows for job in batch], batch[0].params
                )
            except Exception as exc:  # reported to every request of the batch, the loop goes on
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():  # the client may have gone away
                    job.future.set_result(result)

    def _take_batch(self) -> list[_Job]:
        while self._pending and self._pending[0].future.done():  # abandoned requests
            self._pending.popleft()
        if not self._pending:
            return []
        head = self._pending.popleft()
        batch, rows = [head], len(head.rows)
        if head.params.seed is None:
            for job in list(self._pending):
                if (
                    job.params == head.params
                    and not job.future.done()
                    and rows + len(job.rows) <= self.max_batch_size
                ):
                    self._pending.remove(job)
                    batch.append(job)
                    rows += len(job.rows)
        return batch

    def _run(self, groups: list[list[str]], params: SamplingParams) -> list[list[Completion]]:
        """Worker thread: generate all rows of ``groups`` in chunks of ``max_batch_size``."""
        flat = [row for group in groups for row in group]
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self._device).manual_seed(params.seed)
        done: list[Completion] = []
        for start in range(0, len(flat), self.max_batch_size):
            out = generate(
                self.model,
                self.tokenizer,
                flat[start : start + self.max_batch_size],
                max_new_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                stop=params.stop,
                generator=generator,
            )
            counts = out.completion_mask.sum(dim=1).tolist()
            done.extend(
                Completion(text, "stop" if finished else "length", int(count))
                for text, finished, count in zip(out.texts, out.finished, counts, strict=True)
            )
        results, pos = [], 0
        for group in groups:
            results.append(done[pos : pos + len(group)])
            pos += len(group)
        return results


# --- the app -----------------------------------------------------------------------------------------------------
def create_app(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    model_name: str,
    max_batch_size: int = 256,
) -> FastAPI:
    """An OpenAI-compatible FastAPI app serving ``model`` under the name ``model_name``."""
    if max_batch_size < 1:
        raise ValueError("max_batch_size must be >= 1")
    model.eval()
    engine = Engine(model, tokenizer, max_batch_size=max_batch_size)
    # The worker thread owns `tokenizer`; a fast tokenizer must not be used from two threads at once, so the
    # request handlers count tokens and render chat templates with their own copy.
    counter = copy.deepcopy(tokenizer)
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.close()

    app = FastAPI(title="twofold teacher server", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        message = f"{param}: {first['msg']}" if param else str(first["msg"])
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "http_error"
        return APIError(exc.status_code, str(exc.detail), code=kind).response()

    def model_card() -> dict[str, Any]:
        return {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "twofold",
            "max_model_len": context,
        }

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, the served model and batching counters."""
        s = engine.stats
        return {
            "status": "ok",
            "model": model_name,
            "requests": s.requests,
            "batches": s.batches,
            "rows": s.rows,
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """The one served model, as an OpenAI model list."""
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> dict[str, Any]:
        """The served model's card."""
        _check_model(model_id, model_name)
        return model_card()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> dict[str, Any]:
        """OpenAI text completions; choice ``index = prompt_idx * n + j``."""
        _check_common(body, model_name)
        if body.echo:
            raise APIError(400, "echo is not supported by the built-in teacher server", param="echo")
        if body.logprobs is not None:
            raise APIError(400, "logprobs are not supported by the built-in teacher server", param="logprobs")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt: give at least one prompt", param="prompt")
        lengths = _prompt_lengths(counter, prompts)
        params = _params(body, body.max_tokens or 16, max(lengths), context)
        n = body.n or 1
        outs = await _generate(engine, [p for p in prompts for _ in range(n)], params)
        choices = [
            {"index": k, "text": o.text, "finish_reason": o.finish_reason, "logprobs": None}
            for k, o in enumerate(outs)
        ]
        return _envelope("cmpl", "text_completion", model_name, choices, sum(lengths), outs)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> dict[str, Any]:
        """OpenAI chat completions: the messages go through the chat template, then ``n`` samples."""
        _check_common(body, model_name)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by the built-in teacher server", param="logprobs")
        prompt = _chat_prompt(counter, body.messages)
        (length,) = _prompt_lengths(counter, [prompt], param="messages")
        budget = body.max_completion_tokens or body.max_tokens
        if budget is None:
            budget = max(
                1, min(CHAT_DEFAULT_MAX_TOKENS, context - length if context else CHAT_DEFAULT_MAX_TOKENS)
            )
        params = _params(body, budget, length, context)
        outs = await _generate(engine, [prompt] * (body.n or 1), params)
        choices = [
            {
                "index": j,
                "message": {"role": "assistant", "content": o.text},
                "finish_reason": o.finish_reason,
                "logprobs": None,
            }
            for j, o in enumerate(outs)
        ]
        return _envelope("chatcmpl", "chat.completion", model_name, choices, length, outs)

    return app


def _check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise APIError(
            404,
            f"The model `{requested}` does not exist; this server serves `{served}`",
            param="model",
            code="model_not_found",
        )


def _check_common(body: _SamplingRequest, served: str) -> None:
    _check_model(body.model, served)
    if body.stream:
        raise APIError(400, "stream is not supported by the built-in teacher server", param="stream")


def _prompt_lengths(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], param: str = "prompt"
) -> list[int]:
    if any(p == "" for p in prompts):
        raise APIError(400, f"{param}: empty prompts are not supported", param=param)
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def _params(body: _SamplingRequest, max_tokens: int, longest_prompt: int, context: int) -> SamplingParams:
    if context and longest_prompt + max_tokens > context:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens; the prompt has {longest_prompt} and "
            f"max_tokens asks for {max_tokens} more. Reduce max_tokens or the prompt.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        max_tokens=max_tokens,
        stop=tuple(s for s in stop if s),
        seed=body.seed,
    )


def _chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[ChatMessage]) -> str:
    msgs = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
        msgs.append({"role": m.role, "content": content or ""})
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
    return "\n".join(m["content"] for m in msgs)


async def _generate(engine: Engine, rows: list[str], params: SamplingParams) -> list[Completion]:
    try:
        return await engine.generate(rows, params)
    except (RuntimeError, ValueError) as exc:  # e.g. out of memory; the server stays up
        raise APIError(
            500, f"generation failed: {exc}", type="server_error", code="generation_failed"
        ) from exc


def _envelope(
    prefix: str,
    obj: str,
    model: str,
    choices: list[dict[str, Any]],
    prompt_tokens: int,
    outs: list[Completion],
) -> dict[str, Any]:
    completion_tokens = sum(o.tokens for o in outs)
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# --- running it --------------------------------------------------------------------------------------------------
def serve(
    app: FastAPI, *, model_name: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"
) -> None:
    """Run ``app`` with uvicorn until interrupted; prints ``READY_BANNER`` and the base URL once listening.

    ``port=0`` picks a free port (the banner shows which).
    """
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            print(f"{READY_BANNER} http://{host}:{bound}/v1 (model {model_name!r})", flush=True)
        await task

    asyncio.run(run())


def launch(
    *,
    model_dir: str | Path | None = None,
    tiny: bool = False,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str | None = None,
    max_batch_size: int = 256,
    threads: int = 0,
    device: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
) -> None:
    """Load a local HF checkpoint (``model_dir``) or build a fresh ``tiny-teacher`` (``tiny``) and serve it."""
    if (model_dir is None) == (not tiny):
        raise ValueError("give exactly one of --model DIR or --tiny")
    if threads > 0:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    if model_dir is not None:
        model, tokenizer = load_causal_lm(model_dir, dtype=dtype, device=dev)
        name = served_model_name or Path(model_dir).resolve().name
    else:
        model, tokenizer = build_tiny("tiny-teacher", seed=seed)
        model = on_device(model, dev)
        name = served_model_name or "tiny-teacher"
    app = create_app(model, tokenizer, model_name=name, max_batch_size=max_batch_size)
    serve(app, model_name=name, host=host, port=port)
