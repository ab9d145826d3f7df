"""Async client for any OpenAI-compatible teacher endpoint (vLLM, SGLang, TGI, OpenAI, the built-in server).

``TeacherClient.sample`` draws ``cfg.n`` samples per question at each of ``cfg.temperatures``. Every sample has
the key ``(question_id, round(temperature, 4), index)`` with ``index`` in ``0..n-1``; keys passed in ``skip``
(already persisted) are never requested again, so a resumed job pays only for what is missing. Each response is
handed to ``sink`` as soon as its request completes, before anything else uses it.

Requests are made by ``openai.AsyncOpenAI``, with its retry loop (connection errors, timeouts, 408, 409, 429,
5xx; ``Retry-After`` and ``retry-after-ms`` honoured, a request asked to wait over 2 minutes fails) and its request
building. This module adds what openai does not know about: the delay of each retry comes from ``cfg.backoff_s``
and ``cfg.backoff_max_s`` and is reported as a ``teacher_retry`` warning event; a body of the wrong shape is
retried within the same ``cfg.max_retries``; each attempt, body included, must finish within ``cfg.timeout_s``;
``cfg.concurrency`` workers keep at most that many requests in flight, drawing them from a plan built as it is
sent. Other 4xx fail at once with :class:`TeacherError`; retries exhausted raise :class:`TeacherUnavailable`.

What reaches the endpoint and what comes back from it are kept narrow, because ``base_url`` is chosen by whoever
submits the job: every request goes through one ``httpx2.AsyncClient`` (:func:`_http_client`, which takes the
transport an egress policy supplies); redirects are not followed; the endpoint hears only the headers in
``_SENT_HEADERS`` (the worker's ``OPENAI_*`` environment never reaches it); errors and events carry a status and a
fixed reason, never text from the remote body, which goes to the operator log only. The API key never appears in
events, errors or logs.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import httpx2
import openai

from twofold.core.configs import TeacherConfig
from twofold.core.records import TeacherSample
from twofold.core.tasks import Item

log = logging.getLogger("twofold.teacher")

#: (level, type, message, data) -> None; the stage forwards it to ``Callbacks.event``.
EventHook = Callable[[str, str, str, dict[str, Any]], None]
#: Receives each response's samples; may be a coroutine function. Raising aborts sampling.
Sink = Callable[[list[TeacherSample]], Any]
SampleKey = tuple[str, float, int]

#: Statuses that may pass if tried again (openai retries them; when its budget is spent they mean "unavailable").
_TRANSIENT_STATUS = frozenset({408, 409, 429})
#: Request headers the endpoint may see; the rest of what openai adds (organisation and project ids, platform
#: details, ``OPENAI_CUSTOM_HEADERS`` from the environment) is dropped before sending.
_SENT_HEADERS = frozenset(
    {"host", "accept", "accept-encoding", "connection", "content-type", "content-length", "user-agent"}
    | {"authorization", "x-stainless-retry-count"}
)
_EXCERPT_CHARS = 300
#: Longest wait a Retry-After header can impose (openai does not retry at all when asked to wait longer).
_MAX_RETRY_AFTER_S = 120.0
_HEALTH_TIMEOUT_S = 10.0
_POLL_S = 0.25
_T = TypeVar("_T")


class TeacherError(RuntimeError):
    """The teacher endpoint refused a request (or answered nonsense); ``status``/``url`` say where and how."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TeacherUnavailable(TeacherError):
    """The endpoint could not be reached or kept failing transiently: health check failed or retries ran out."""


@dataclass
class TeacherUsage:
    """What a call cost. ``requests`` counts HTTP requests sent (retries included); ``errors`` failed attempts;
    token counts are the endpoint's own ``usage`` totals; ``samples`` the samples delivered to the sink."""

    requests: int = 0
    retries: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    samples: int = 0

    def add(self, other: TeacherUsage) -> None:
        """Accumulate ``other`` into this one."""
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def to_dict(self) -> dict[str, int]:
        """Plain-data form."""
        return asdict(self)


@dataclass(slots=True)
class _Request:
    """One planned sampling request: prompts of one temperature, each filling the listed sample indices."""

    temperature: float
    n: int
    prompts: list[str] = field(default_factory=list)
    owners: list[tuple[str, list[int]]] = field(default_factory=list)  # per prompt: (question_id, indices)
    seed: int | None = None


def plan_requests(
    cfg: TeacherConfig,
    items: Sequence[Item],
    *,
    build_prompt: Callable[[Item], str],
    skip: Collection[SampleKey] = frozenset(),
) -> list[_Request]:
    """The requests :meth:`TeacherClient.sample` will send, in order (deterministic for the same inputs).

    A question's missing indices are requested together with ``n = len(missing)``; the completions API batches
    up to ``cfg.prompts_per_request`` prompts of the same temperature and missing count into one request; the
    chat API sends one question per request. Request ``k`` carries ``seed = cfg.seed + k``.
    """
    return list(_iter_plan(cfg, items, build_prompt, _rounded(skip)))


def _iter_plan(
    cfg: TeacherConfig,
    items: Sequence[Item],
    build_prompt: Callable[[Item], str],
    skip: Collection[SampleKey],
) -> Iterator[_Request]:
    """:func:`plan_requests` one request at a time, building prompts only as requests are drawn (the plan of
    100k questions never sits in memory)."""
    per_request = cfg.prompts_per_request if cfg.api == "completions" else 1
    k = 0

    def seeded(req: _Request) -> _Request:
        nonlocal k
        if cfg.seed is not None:
            req.seed = cfg.seed + k
        k += 1
        return req

    for temperature in cfg.temperatures:
        t_key = round(temperature, 4)
        open_requests: dict[int, _Request] = {}  # missing count -> request being filled
        for item in items:
            missing = _missing(cfg, item.id, t_key, skip)
            if not missing:
                continue
            req = open_requests.setdefault(len(missing), _Request(temperature=temperature, n=len(missing)))
            req.prompts.append(build_prompt(item))
            req.owners.append((item.id, missing))
            if len(req.prompts) == per_request:
                yield seeded(open_requests.pop(len(missing)))
        for req in open_requests.values():
            yield seeded(req)


def _missing(cfg: TeacherConfig, question_id: str, t_key: float, skip: Collection[SampleKey]) -> list[int]:
    return [i for i in range(cfg.n) if (question_id, t_key, i) not in skip]


def _rounded(skip: Collection[SampleKey]) -> set[SampleKey]:
    return {(q, round(t, 4), i) for q, t, i in skip}


# --- one logical request, across its attempts ---------------------------------------------------------------------
@dataclass(slots=True)
class _Exchange:
    """What :class:`_Wire` and the retry hook learn about the request being made in the current task: how many
    attempts it took, and how the last one failed (a status and a fixed reason, never remote text)."""

    method: str
    url: str  # redacted, for messages
    usage: TeacherUsage
    retries: int = 0
    status: int | None = None
    reason: str = ""
    unreachable: bool = False

    def failed(self, reason: str, *, status: int | None = None, unreachable: bool = False) -> None:
        self.usage.errors += 1
        self.reason, self.status, self.unreachable = reason, status, unreachable


#: The exchange of the current task: each worker is its own task, so concurrent requests never share one.
_EXCHANGE: ContextVar[_Exchange | None] = ContextVar("twofold_teacher_exchange", default=None)


class _Failed(Exception):
    """A request that failed for good; ``transient`` says whether trying later may pass."""

    def __init__(self, exchange: _Exchange, *, transient: bool) -> None:
        super().__init__(exchange.reason)
        self.exchange = exchange
        self.transient = transient

    @property
    def attempts(self) -> int:
        return self.exchange.retries + 1


class _Malformed(Exception):
    """A 200 response whose body is not what was asked for (its text stays out of the message)."""


class _Wire(httpx2.AsyncBaseTransport):
    """The transport under the client: counts attempts, records how each failed, enforces the whole-attempt
    deadline and decides which request headers leave the process. ``inner`` does the actual I/O."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, *, api_key: str | None) -> None:
        self._inner = inner
        self._authorization = f"Bearer {api_key}" if api_key else None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """One attempt: send ``request`` and read the whole body within the request's read timeout."""
        for name in [k for k in request.headers if k not in _SENT_HEADERS]:
            del request.headers[name]
        # set here, whatever openai merged in (an OPENAI_CUSTOM_HEADERS value, "Bearer " when it has no key)
        if self._authorization is None:
            request.headers.pop("authorization", None)
        else:
            request.headers["authorization"] = self._authorization
        exchange = _EXCHANGE.get()
        if exchange is not None:
            exchange.usage.requests += 1
        # httpx bounds each read; a server that drips a byte at a time passes that forever, so bound the whole
        deadline = request.extensions.get("timeout", {}).get("read")
        try:
            async with asyncio.timeout(deadline):
                response = await self._inner.handle_async_request(request)
                try:
                    await response.aread()
                except BaseException:
                    await response.aclose()
                    raise
        except (TimeoutError, httpx2.ReadTimeout, httpx2.WriteTimeout) as exc:
            reason = f"no complete response within {deadline:g}s" if deadline else _describe(exc)
            if exchange is not None:
                exchange.failed(reason)
            raise httpx2.ReadTimeout(reason, request=request) from exc
        except httpx2.TransportError as exc:
            if exchange is not None:
                exchange.failed(_describe(exc), unreachable=True)
            raise
        if exchange is not None and not response.is_success:
            exchange.failed(f"HTTP {response.status_code}", status=response.status_code)
        return response

    async def aclose(self) -> None:
        """Close the inner transport's connections."""
        await self._inner.aclose()


class _OpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` whose retry waits come from ``on_retry``.

    openai's retry loop calls ``_calculate_retry_timeout`` once, right before each wait, with the headers of the
    response that failed (none after a connection error or timeout): the one place that knows a retry is coming.
    """

    def __init__(self, *, on_retry: Callable[[float | None], float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_retry = on_retry

    def _calculate_retry_timeout(
        self, remaining_retries: int, options: object, response_headers: httpx2.Headers | None = None
    ) -> float:
        return self._on_retry(self._parse_retry_after_header(response_headers))


#: The lane of the current task: sampling worker ``i`` sends on lane ``i``; everything else on lane 0.
_LANE: ContextVar[int] = ContextVar("twofold_teacher_lane", default=0)
#: Most connections in one pool: httpcore's pool walks all its connections on every request and release.
_LANE_CONNECTIONS = 32


class _Lanes(httpx2.AsyncBaseTransport):
    """``concurrency`` connections as several pools of at most ``_LANE_CONNECTIONS``, each serving its own
    workers; at 256 in flight one pool costs about 0.3 ms of CPU per request more than eight pools of 32."""

    def __init__(self, concurrency: int) -> None:
        count = -(-concurrency // _LANE_CONNECTIONS)
        per_pool = -(-concurrency // count)
        limits = httpx2.Limits(max_connections=per_pool, max_keepalive_connections=per_pool)
        self._pools = [httpx2.AsyncHTTPTransport(limits=limits) for _ in range(count)]

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` on the pool of the current task's lane."""
        return await self._pools[_LANE.get() % len(self._pools)].handle_async_request(request)

    async def aclose(self) -> None:
        """Close every pool."""
        for pool in self._pools:
            await pool.aclose()


def _http_client(cfg: TeacherConfig, transport: httpx2.AsyncBaseTransport | None) -> httpx2.AsyncClient:
    """The one HTTP client of a :class:`TeacherClient`: all its requests pass through ``transport`` (default:
    :class:`_Lanes` of ``cfg.concurrency`` connections), redirects are not followed, and the environment's proxy
    settings are not read (they would route requests around ``transport``)."""
    inner = transport if transport is not None else _Lanes(cfg.concurrency)
    return httpx2.AsyncClient(
        transport=_Wire(inner, api_key=cfg.api_key),
        timeout=httpx2.Timeout(cfg.timeout_s),
        follow_redirects=False,
        trust_env=False,
    )


class TeacherClient:
    """An OpenAI-compatible teacher endpoint, configured by a :class:`core.configs.TeacherConfig`.

    Use as ``async with TeacherClient(cfg) as teacher:`` (or call :meth:`aclose`). ``on_event`` receives
    ``(level, type, message, data)`` for retries and warnings. ``usage`` accumulates over all calls.
    ``transport`` replaces the connection pools under the client (an egress policy that vets the addresses it
    connects to); every request of this client goes through it.
    """

    def __init__(
        self,
        cfg: TeacherConfig,
        *,
        on_event: EventHook | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.usage = TeacherUsage()
        self._on_event = on_event
        if "?" in cfg.base_url or "#" in cfg.base_url:
            # what followed would swallow the path this client appends ("/models" becoming a query string)
            raise TeacherError("teacher.base_url must not contain '?' or '#'", url=_redact_url(cfg.base_url))
        self._base = cfg.base_url.rstrip("/")
        self._safe_base = _redact_url(self._base)
        self._rng = random.Random()
        self._openai = _OpenAI(
            on_retry=self._retry,
            base_url=self._base,
            # given explicitly, so openai reads no OPENAI_* credentials from the environment
            api_key=cfg.api_key or "",
            admin_api_key="",
            max_retries=cfg.max_retries,
            timeout=httpx2.Timeout(cfg.timeout_s),
            http_client=_http_client(cfg, transport),
        )

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._openai.close()

    # --- health ------------------------------------------------------------------------------------------------
    async def check(self, *, wait_s: float = 0.0) -> list[str]:
        """GET ``{base_url}/models``; returns the model ids the endpoint serves.

        Polls for up to ``wait_s`` seconds while the endpoint is unreachable or failing transiently (a server
        still starting), then tries once more with the usual retries. Raises :class:`TeacherUnavailable`
        naming ``base_url`` when it cannot be reached or answers with an error; emits a
        ``teacher_model_missing`` warning when ``cfg.model`` is not among the ids.
        """
        deadline = time.monotonic() + wait_s
        while True:
            polling = time.monotonic() < deadline
            try:
                ids = await self._call(
                    "GET",
                    "models",
                    None,
                    _model_ids,
                    TeacherUsage(),  # health checks are not sampling costs
                    retries=0 if polling else None,
                    timeout=min(self.cfg.timeout_s, _HEALTH_TIMEOUT_S),
                )
                break
            except _Failed as failure:
                if polling and failure.transient:  # a server still starting: poll quietly
                    await asyncio.sleep(_POLL_S)
                    continue
                raise self._health_error(failure) from None
        if self.cfg.model not in ids:
            self._emit(
                "warning",
                "teacher_model_missing",
                f"teacher.model {self.cfg.model!r} is not listed by {self._safe_base}/models (serves: "
                f"{', '.join(ids) or 'nothing'}); requests may fail",
                {"model": self.cfg.model, "served": ids},
            )
        return ids

    def _health_error(self, failure: _Failed) -> TeacherUnavailable:
        ex = failure.exchange
        if ex.unreachable:
            return TeacherUnavailable(
                f"teacher endpoint {self._safe_base} is unreachable ({ex.reason}); "
                "check teacher.base_url (it should end in /v1) and that the server is running",
                url=self._safe_base,
            )
        if failure.transient:
            message = f"failed after {failure.attempts} attempt(s); last error: {ex.reason}"
        else:
            hint = " (does teacher.base_url end in /v1?)" if ex.status == 404 else _hint(ex.status)
            message = f"answered {ex.reason}{hint}"
        return TeacherUnavailable(
            f"teacher health check GET {ex.url} {message}", url=ex.url, status=ex.status
        )

    # --- sampling ----------------------------------------------------------------------------------------------
    async def sample(
        self,
        items: Sequence[Item],
        *,
        build_prompt: Callable[[Item], str],
        extract_answer: Callable[[str], str | None],
        sink: Sink,
        skip: Collection[SampleKey] = frozenset(),
        on_progress: Callable[[int, int], None] | None = None,
    ) -> TeacherUsage:
        """Draw the samples of ``items`` not already in ``skip``, handing each response's samples to ``sink``.

        Args:
            items: the questions; ``item.id`` becomes ``TeacherSample.question_id``.
            build_prompt: item -> prompt text (sent as the prompt, or as the user message for the chat API).
            extract_answer: completion text -> final answer (or None), stored on each sample.
            sink: called with each response's samples as soon as it arrives (sync or async); raising aborts.
            skip: keys ``(question_id, temperature, index)`` already held; temperatures are rounded to 4 places.
            on_progress: called with (samples delivered, samples planned) after each response.
        Returns:
            The usage of this call (also added to ``self.usage``).
        """
        skip = _rounded(skip)
        total = 0
        if on_progress is not None:
            t_keys = [round(t, 4) for t in self.cfg.temperatures]
            total = sum(len(_missing(self.cfg, it.id, t, skip)) for t in t_keys for it in items)
        usage = TeacherUsage()

        async def run(req: _Request) -> None:
            samples = await self._sample_request(req, extract_answer, usage)
            result = sink(samples)
            if inspect.isawaitable(result):
                await result
            usage.samples += len(samples)
            if on_progress is not None:
                on_progress(usage.samples, total)

        try:
            await self._run_bounded(_iter_plan(self.cfg, items, build_prompt, skip), run)
        finally:
            self.usage.add(usage)
        return usage

    async def greedy(self, prompts: list[str], *, max_tokens: int) -> list[str]:
        """Greedy (temperature 0, n=1) completions of ``prompts``, in order; used to evaluate the teacher."""
        per_request = self.cfg.prompts_per_request if self.cfg.api == "completions" else 1
        texts: list[str] = [""] * len(prompts)
        usage = TeacherUsage()

        async def run(start: int) -> None:
            req = _Request(temperature=0.0, n=1, prompts=prompts[start : start + per_request])
            choices, _ = await self._post_choices(req, self._payload(req, max_tokens=max_tokens), usage)
            texts[start : start + len(choices)] = [text for text, _ in choices]

        try:
            await self._run_bounded(range(0, len(prompts), per_request), run)
        finally:
            self.usage.add(usage)
        return texts

    # --- internals ---------------------------------------------------------------------------------------------
    async def _run_bounded(self, jobs: Iterable[_T], fn: Callable[[_T], Awaitable[None]]) -> None:
        """Run ``fn`` over ``jobs`` with ``cfg.concurrency`` workers drawing from one iterator (so a plan of any
        size costs only the requests in flight); the first failure cancels the rest."""
        pending = iter(jobs)

        async def worker(lane: int) -> None:
            _LANE.set(lane)  # each worker is its own task, so this stays with it
            for job in pending:  # one shared iterator, so each job runs once
                await fn(job)

        try:
            async with asyncio.TaskGroup() as tg:
                for lane in range(self.cfg.concurrency):
                    tg.create_task(worker(lane))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None

    def _payload(self, req: _Request, *, max_tokens: int) -> dict[str, Any]:
        cfg = self.cfg
        payload: dict[str, Any] = {
            "model": cfg.model,
            "n": req.n,
            "temperature": req.temperature,
            "top_p": cfg.top_p if req.temperature > 0 else 1.0,
            "max_tokens": max_tokens,
        }
        if cfg.api == "completions":
            # a single prompt goes as a string: some servers (TGI) accept no lists
            payload["prompt"] = req.prompts if len(req.prompts) > 1 else req.prompts[0]
        else:
            payload["messages"] = [{"role": "user", "content": req.prompts[0]}]
        if cfg.stop:
            payload["stop"] = list(cfg.stop)
        if req.seed is not None:
            payload["seed"] = req.seed
        return payload

    async def _sample_request(
        self, req: _Request, extract_answer: Callable[[str], str | None], usage: TeacherUsage
    ) -> list[TeacherSample]:
        payload = self._payload(req, max_tokens=self.cfg.max_tokens)
        choices, (p_tok, c_tok) = await self._post_choices(req, payload, usage)
        # Split the response's token totals over its samples so that they add up to the totals again.
        prompt_share = _split(p_tok, [len(p) + 1 for p in req.prompts])
        completion_share = _split(c_tok, [len(text) + 1 for text, _ in choices])
        samples = []
        for p, (question_id, indices) in enumerate(req.owners):
            per_choice = _split(prompt_share[p], [1] * req.n)
            for j, index in enumerate(indices):
                k = p * req.n + j
                text, finish = choices[k]
                samples.append(
                    TeacherSample(
                        question_id=question_id,
                        temperature=req.temperature,
                        index=index,
                        text=text,
                        answer=extract_answer(text),
                        prompt_tokens=per_choice[j],
                        completion_tokens=completion_share[k],
                        finish_reason=finish,
                    )
                )
        return samples

    async def _post_choices(
        self, req: _Request, payload: dict[str, Any], usage: TeacherUsage
    ) -> tuple[list[tuple[str, str | None]], tuple[int, int]]:
        """POST a request; returns ``prompt_idx * n + j`` ordered (text, finish_reason) and (prompt, completion)
        token totals, having added the latter to ``usage``. A body of the wrong shape is retried."""
        chat = self.cfg.api == "chat"
        path = "chat/completions" if chat else "completions"
        try:
            choices, tokens = await self._call(
                "POST",
                path,
                payload,
                lambda data: _parse_choices(data, len(req.prompts) * req.n, chat),
                usage,
            )
        except _Failed as failure:
            raise self._request_error(failure) from None
        usage.prompt_tokens += tokens[0]
        usage.completion_tokens += tokens[1]
        return choices, tokens

    def _request_error(self, failure: _Failed) -> TeacherError:
        ex = failure.exchange
        if failure.transient:
            return TeacherUnavailable(
                f"teacher request {ex.method} {ex.url} failed after {failure.attempts} attempt(s); "
                f"last error: {ex.reason}",
                url=ex.url,
                status=ex.status,
            )
        hint = " (check teacher.model)" if ex.status == 404 else _hint(ex.status)
        return TeacherError(
            f"teacher request {ex.method} {ex.url} was rejected with {ex.reason}{hint}",
            url=ex.url,
            status=ex.status,
        )

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        parse: Callable[[Any], _T],
        usage: TeacherUsage,
        *,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> _T:
        """One logical request through openai with up to ``retries`` (default ``cfg.max_retries``) retries;
        returns ``parse(json_body)``. Raises :class:`_Failed` when it fails for good."""
        budget = self.cfg.max_retries if retries is None else retries
        # an absolute URL, so what openai does with its base_url cannot change where the request goes
        url = f"{self._base}/{path}"
        ex = _Exchange(method=method, url=f"{self._safe_base}/{path}", usage=usage)
        token = _EXCHANGE.set(ex)
        try:
            while True:
                options: openai.RequestOptions = {"max_retries": budget - ex.retries}
                if timeout is not None:
                    options["timeout"] = timeout
                try:
                    if method == "GET":
                        resp = await self._openai.get(url, cast_to=httpx2.Response, options=options)
                    else:
                        resp = await self._openai.post(
                            url, cast_to=httpx2.Response, body=body, options=options
                        )
                except openai.APIStatusError as err:
                    status = err.status_code
                    self._log_body(ex, err.response)
                    raise _Failed(ex, transient=status in _TRANSIENT_STATUS or status >= 500) from None
                except openai.APIConnectionError:  # timeouts included; _Wire has recorded the reason
                    raise _Failed(ex, transient=True) from None
                try:
                    return parse(_json(resp))
                except _Malformed as bad:
                    ex.failed(str(bad), status=resp.status_code)
                    self._log_body(ex, resp)
                    if ex.retries >= budget:
                        raise _Failed(ex, transient=True) from None
                await asyncio.sleep(self._retry(None))
        finally:
            _EXCHANGE.reset(token)

    def _retry(self, retry_after: float | None) -> float:
        """Count a retry of the current exchange, report it as a ``teacher_retry`` event and return how long to
        wait first: ``Retry-After`` when the endpoint sent one, else exponential backoff with jitter."""
        ex = _EXCHANGE.get()
        attempt = 0
        if ex is not None:
            ex.retries += 1
            ex.usage.retries += 1
            attempt = ex.retries
        if retry_after is not None and math.isfinite(retry_after):
            delay = min(max(0.0, retry_after), _MAX_RETRY_AFTER_S)
        else:
            base = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** max(0, attempt - 1))
            delay = base * (0.5 + 0.5 * self._rng.random())  # jitter spreads clients that failed together
        if ex is not None:
            self._emit(
                "warning",
                "teacher_retry",
                f"teacher request {ex.method} {ex.url} failed ({ex.reason}); "
                f"retry {attempt}/{self.cfg.max_retries} in {delay:.2f}s",
                {
                    "url": ex.url,
                    "attempt": attempt,
                    "max_retries": self.cfg.max_retries,
                    "status": ex.status,
                    "reason": ex.reason,
                    "delay_s": round(delay, 3),
                },
            )
        return delay

    def _log_body(self, ex: _Exchange, response: httpx2.Response) -> None:
        """The remote body goes to the operator log (key masked), never into an error or event."""
        try:
            text = response.text
        except (httpx2.ResponseNotRead, UnicodeDecodeError):
            text = ""
        text = " ".join(text.split())
        if self.cfg.api_key:
            text = text.replace(self.cfg.api_key, "***")
        excerpt = text[:_EXCERPT_CHARS] + ("..." if len(text) > _EXCERPT_CHARS else "") if text else "(empty)"
        log.warning("teacher %s %s: %s; body: %s", ex.method, ex.url, ex.reason, excerpt)

    def _emit(self, level: str, type_: str, message: str, data: dict[str, Any]) -> None:
        log.log(logging.WARNING if level == "warning" else logging.INFO, message)
        if self._on_event is not None:
            self._on_event(level, type_, message, data)


def _json(response: httpx2.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        raise _Malformed("malformed JSON body") from None


def _parse_choices(
    data: Any, expected: int, chat: bool
) -> tuple[list[tuple[str, str | None]], tuple[int, int]]:
    """``expected`` (text, finish_reason) ordered by choice index, and the (prompt, completion) token totals."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != expected:
        got = len(choices) if isinstance(choices, list) else "no"
        raise _Malformed(f"malformed response: expected {expected} choices, got {got}")
    ordered: list[tuple[str, str | None] | None] = [None] * expected
    for pos, ch in enumerate(choices):
        if not isinstance(ch, dict):
            raise _Malformed(f"malformed response: choice {pos} is not an object")
        idx = ch.get("index", pos)
        if chat:
            message = ch.get("message")
            # a chat message may carry null content (an empty answer)
            text = (message.get("content") or "") if isinstance(message, dict) else None
        else:
            text = ch.get("text")
        if not isinstance(idx, int) or not 0 <= idx < expected or ordered[idx] is not None:
            raise _Malformed(f"malformed response: bad or repeated choice index at position {pos}")
        if not isinstance(text, str):
            raise _Malformed(f"malformed response: choice {idx} has no text")
        finish = ch.get("finish_reason")
        ordered[idx] = (text, finish if isinstance(finish, str) else None)
    raw_usage = data.get("usage") or {}
    tokens = (
        (raw_usage.get("prompt_tokens") or 0, raw_usage.get("completion_tokens") or 0)
        if isinstance(raw_usage, dict)
        else None
    )
    if tokens is None or not all(isinstance(t, int) and t >= 0 for t in tokens):
        raise _Malformed("malformed response: usage is not a pair of non-negative token counts")
    return [c for c in ordered if c is not None], tokens


def _model_ids(data: Any) -> list[str]:
    try:
        return [str(m["id"]) for m in data["data"]]
    except (KeyError, TypeError):
        raise _Malformed("did not return an OpenAI model list") from None


def _hint(status: int | None) -> str:
    if status in (401, 403):
        return " (check teacher.api_key)"
    if status is not None and 300 <= status < 400:
        return " (redirects are not followed; give the endpoint's final address as teacher.base_url)"
    return ""


def _split(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder), so the parts add up to ``total``."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    wsum = sum(weights)
    raw = [total * w / wsum for w in weights]
    parts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: parts[i] - raw[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redact_url(url: str) -> str:
    """Hide credentials embedded in a URL (``https://user:pass@host``)."""
    return re.sub(r"//[^/@]+@", "//***@", url)


async def _with_client(
    cfg: TeacherConfig, on_event: EventHook | None, fn: Callable[[TeacherClient], Awaitable[_T]]
) -> _T:
    async with TeacherClient(cfg, on_event=on_event) as client:
        return await fn(client)


def sample_sync(
    cfg: TeacherConfig, items: Sequence[Item], *, on_event: EventHook | None = None, **kw: Any
) -> TeacherUsage:
    """:meth:`TeacherClient.sample` from synchronous code (runs its own event loop)."""
    return asyncio.run(_with_client(cfg, on_event, lambda c: c.sample(items, **kw)))


def greedy_sync(
    cfg: TeacherConfig, prompts: Iterable[str], *, max_tokens: int, on_event: EventHook | None = None
) -> list[str]:
    """:meth:`TeacherClient.greedy` from synchronous code (runs its own event loop)."""
    return asyncio.run(_with_client(cfg, on_event, lambda c: c.greedy(list(prompts), max_tokens=max_tokens)))


def check_sync(cfg: TeacherConfig, *, wait_s: float = 0.0, on_event: EventHook | None = None) -> list[str]:
    """:meth:`TeacherClient.check` from synchronous code (runs its own event loop)."""
    return asyncio.run(_with_client(cfg, on_event, lambda c: c.check(wait_s=wait_s)))
