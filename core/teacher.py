"""Async client for any OpenAI-compatible teacher endpoint (vLLM, SGLang, TGI, OpenAI, the built-in server).

``TeacherClient.sample`` draws ``cfg.n`` samples per question at each of ``cfg.temperatures``. Every sample has
the key ``(question_id, round(temperature, 4), index)`` with ``index`` in ``0..n-1``; keys passed in ``skip``
(already persisted) are never requested again, so a resumed job pays only for what is missing. Each response is
handed to ``sink`` as soon as its request completes, before anything else uses it.

Transport rules: at most ``cfg.concurrency`` requests in flight; each attempt has a total deadline of
``cfg.timeout_s``; connection errors, timeouts, 408, 429 (``Retry-After`` honoured), 5xx and malformed bodies
are retried up to ``cfg.max_retries`` times with exponential backoff and jitter, each retry reported as a
``teacher_retry`` warning event. Other 4xx fail at once with :class:`TeacherError`; retries exhausted raise
:class:`TeacherUnavailable`. The API key is sent as a bearer token and never appears in events or errors.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import httpx

from twofold.core.configs import TeacherConfig
from twofold.core.records import TeacherSample
from twofold.core.tasks import Item

log = logging.getLogger("twofold.teacher")

#: (level, type, message, data) -> None; the stage forwards it to ``Callbacks.event``.
EventHook = Callable[[str, str, str, dict[str, Any]], None]
#: Receives each response's samples; may be a coroutine function. Raising aborts sampling.
Sink = Callable[[list[TeacherSample]], Any]
SampleKey = tuple[str, float, int]

_RETRY_STATUS = frozenset({408, 429})
_EXCERPT_CHARS = 300
#: Longest wait a Retry-After header can impose (a server asking for minutes is treated as this).
_MAX_RETRY_AFTER_S = 60.0
_T = TypeVar("_T")


class TeacherError(RuntimeError):
    """The teacher endpoint refused a request (or answered nonsense); ``status``/``url`` say where and how."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class TeacherUnavailable(TeacherError):
    """The endpoint could not be reached or kept failing transiently: health check failed or retries ran out."""


class _Retryable(Exception):
    """One failed attempt that may succeed if tried again."""

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


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


@dataclass
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
    skip_keys = {(q, round(t, 4), i) for q, t, i in skip}
    per_request = cfg.prompts_per_request if cfg.api == "completions" else 1
    plan: list[_Request] = []
    for temperature in cfg.temperatures:
        t_key = round(temperature, 4)
        open_requests: dict[int, _Request] = {}  # missing count -> request being filled
        for item in items:
            missing = [i for i in range(cfg.n) if (item.id, t_key, i) not in skip_keys]
            if not missing:
                continue
            req = open_requests.setdefault(len(missing), _Request(temperature=temperature, n=len(missing)))
            req.prompts.append(build_prompt(item))
            req.owners.append((item.id, missing))
            if len(req.prompts) == per_request:
                plan.append(open_requests.pop(len(missing)))
        plan.extend(open_requests.values())
    if cfg.seed is not None:
        for k, req in enumerate(plan):
            req.seed = cfg.seed + k
    return plan


class TeacherClient:
    """An OpenAI-compatible teacher endpoint, configured by a :class:`core.configs.TeacherConfig`.

    Use as ``async with TeacherClient(cfg) as teacher:`` (or call :meth:`aclose`). ``on_event`` receives
    ``(level, type, message, data)`` for retries and warnings. ``usage`` accumulates over all calls.
    """

    def __init__(self, cfg: TeacherConfig, *, on_event: EventHook | None = None) -> None:
        self.cfg = cfg
        self.usage = TeacherUsage()
        self._on_event = on_event
        self._base = cfg.base_url.rstrip("/")
        self._safe_base = _redact_url(self._base)
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s),
            limits=httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency),
        )
        self._rng = random.Random()

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # --- health ------------------------------------------------------------------------------------------------
    async def check(self, *, wait_s: float = 0.0) -> list[str]:
        """GET ``{base_url}/models``; returns the model ids the endpoint serves.

        Polls for up to ``wait_s`` seconds while the endpoint is unreachable (a server still starting). Raises
        :class:`TeacherUnavailable` naming ``base_url`` when it cannot be reached or answers with an error;
        emits a ``teacher_model_missing`` warning when ``cfg.model`` is not among the ids.
        """
        url = f"{self._base}/models"
        deadline = time.monotonic() + wait_s
        attempt = 0
        while True:
            try:
                ids = self._model_ids(await self._get(url))
                break
            except _Retryable as failure:
                if time.monotonic() < deadline:  # a server still starting: poll quietly
                    await asyncio.sleep(0.25)
                    continue
                if attempt >= self.cfg.max_retries:
                    raise TeacherUnavailable(
                        failure.reason, url=self._safe_base, status=failure.status
                    ) from None
                attempt += 1
                await asyncio.sleep(self._report_retry("GET", url, attempt, failure))
        if self.cfg.model not in ids:
            self._emit(
                "warning",
                "teacher_model_missing",
                f"teacher.model {self.cfg.model!r} is not listed by {self._safe_base}/models (serves: "
                f"{', '.join(ids) or 'nothing'}); requests may fail",
                {"model": self.cfg.model, "served": ids},
            )
        return ids

    async def _get(self, url: str) -> Any:
        """One health-check attempt: the JSON body, or :class:`_Retryable` for what may pass (unreachable,
        408/429/5xx, a body that is not JSON); other statuses raise :class:`TeacherUnavailable` at once."""
        try:
            resp = await self._http.get(url, timeout=min(self.cfg.timeout_s, 10.0))
        except httpx.TransportError as exc:
            raise _Retryable(
                f"teacher endpoint {self._safe_base} is unreachable ({_describe(exc)}); "
                "check teacher.base_url (it should end in /v1) and that the server is running"
            ) from None
        status = resp.status_code
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(
                f"teacher health check GET {_redact_url(url)} answered HTTP {status}: {self._excerpt(resp.text)}",
                status=status,
                retry_after=_retry_after(resp.headers.get("retry-after")),
            )
        if status != 200:
            hint = " (check teacher.api_key)" if status in (401, 403) else ""
            hint = " (does teacher.base_url end in /v1?)" if status == 404 else hint
            raise TeacherUnavailable(
                f"teacher health check GET {_redact_url(url)} answered HTTP {status}{hint}: "
                f"{self._excerpt(resp.text)}",
                url=_redact_url(url),
                status=status,
            )
        try:
            return resp.json()
        except ValueError:
            raise self._not_a_model_list(url, resp.text) from None

    def _model_ids(self, body: Any) -> list[str]:
        try:
            return [str(m["id"]) for m in body["data"]]
        except (KeyError, TypeError):
            raise self._not_a_model_list(f"{self._base}/models", str(body)) from None

    def _not_a_model_list(self, url: str, text: str) -> _Retryable:
        return _Retryable(
            f"teacher health check GET {_redact_url(url)} did not return an OpenAI model list: "
            f"{self._excerpt(text)}"
        )

    def _report_retry(self, method: str, url: str, attempt: int, failure: _Retryable) -> float:
        """Emit the ``teacher_retry`` event of retry number ``attempt`` and return the delay to wait first."""
        delay = self._delay(attempt - 1, failure.retry_after)
        self._emit(
            "warning",
            "teacher_retry",
            f"teacher request {method} {_redact_url(url)} failed ({failure.reason}); "
            f"retry {attempt}/{self.cfg.max_retries} in {delay:.2f}s",
            {
                "url": _redact_url(url),
                "attempt": attempt,
                "max_retries": self.cfg.max_retries,
                "status": failure.status,
                "reason": failure.reason,
                "delay_s": round(delay, 3),
            },
        )
        return delay

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
        plan = plan_requests(self.cfg, items, build_prompt=build_prompt, skip=skip)
        total = sum(req.n * len(req.prompts) for req in plan)
        usage = TeacherUsage()

        async def run(req: _Request) -> None:
            samples, tokens = await self._sample_request(req, extract_answer, usage)
            result = sink(samples)
            if inspect.isawaitable(result):
                await result
            usage.samples += len(samples)
            usage.prompt_tokens += tokens[0]
            usage.completion_tokens += tokens[1]
            if on_progress is not None:
                on_progress(usage.samples, total)

        try:
            await self._run_bounded(plan, run)
        finally:
            self.usage.add(usage)
        return usage

    async def greedy(self, prompts: list[str], *, max_tokens: int) -> list[str]:
        """Greedy (temperature 0, n=1) completions of ``prompts``, in order; used to evaluate the teacher."""
        per_request = self.cfg.prompts_per_request if self.cfg.api == "completions" else 1
        chunks = [
            list(range(i, min(i + per_request, len(prompts)))) for i in range(0, len(prompts), per_request)
        ]
        texts: list[str] = [""] * len(prompts)
        usage = TeacherUsage()

        async def run(chunk: list[int]) -> None:
            req = _Request(temperature=0.0, n=1, prompts=[prompts[i] for i in chunk])
            payload = self._payload(req, max_tokens=max_tokens)
            choices, tokens = await self._post_choices(req, payload, usage)
            for i, (text, _) in zip(chunk, choices, strict=True):
                texts[i] = text
            usage.prompt_tokens += tokens[0]
            usage.completion_tokens += tokens[1]

        try:
            await self._run_bounded(chunks, run)
        finally:
            self.usage.add(usage)
        return texts

    # --- internals ---------------------------------------------------------------------------------------------
    async def _run_bounded(self, jobs: list[_T], fn: Callable[[_T], Awaitable[None]]) -> None:
        """Run ``fn`` over ``jobs`` with at most ``cfg.concurrency`` in flight; the first failure cancels the rest."""
        pending = iter(jobs)

        async def worker() -> None:
            for job in pending:  # one shared iterator, so each job runs once
                await fn(job)

        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(self.cfg.concurrency, len(jobs))):
                    tg.create_task(worker())
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
    ) -> tuple[list[TeacherSample], tuple[int, int]]:
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
        return samples, (p_tok, c_tok)

    async def _post_choices(
        self, req: _Request, payload: dict[str, Any], usage: TeacherUsage
    ) -> tuple[list[tuple[str, str | None]], tuple[int, int]]:
        """POST a request; returns ``prompt_idx * n + j`` ordered (text, finish_reason) and (prompt, completion)
        token totals. A body of the wrong shape counts as a retryable failure."""
        chat = self.cfg.api == "chat"
        expected = len(req.prompts) * req.n

        def parse(data: Any) -> tuple[list[tuple[str, str | None]], tuple[int, int]]:
            choices = data.get("choices") if isinstance(data, dict) else None
            if not isinstance(choices, list) or len(choices) != expected:
                got = len(choices) if isinstance(choices, list) else "no"
                raise _Retryable(f"malformed response: expected {expected} choices, got {got}")
            ordered: list[tuple[str, str | None] | None] = [None] * expected
            for pos, ch in enumerate(choices):
                if not isinstance(ch, dict):
                    raise _Retryable(f"malformed response: choice {pos} is not an object")
                idx = ch.get("index", pos)
                if chat:
                    message = ch.get("message")
                    # a chat message may carry null content (an empty answer)
                    text = (message.get("content") or "") if isinstance(message, dict) else None
                else:
                    text = ch.get("text")
                if not isinstance(idx, int) or not 0 <= idx < expected or ordered[idx] is not None:
                    raise _Retryable(f"malformed response: bad or repeated choice index {idx!r}")
                if not isinstance(text, str):
                    raise _Retryable(f"malformed response: choice {idx} has no text")
                ordered[idx] = (text, ch.get("finish_reason"))
            raw_usage = data.get("usage") or {}
            tokens = (int(raw_usage.get("prompt_tokens") or 0), int(raw_usage.get("completion_tokens") or 0))
            return [c for c in ordered if c is not None], tokens

        path = "/chat/completions" if chat else "/completions"
        return await self._post(path, payload, usage, parse)

    async def _post(
        self, path: str, payload: dict[str, Any], usage: TeacherUsage, parse: Callable[[Any], _T]
    ) -> _T:
        """POST with the retry policy of this module; returns ``parse(json_body)``."""
        url = f"{self._base}{path}"
        attempt = 0
        while True:
            usage.requests += 1
            try:
                return parse(await self._attempt(url, payload))
            except TeacherError:
                usage.errors += 1
                raise
            except _Retryable as failure:
                usage.errors += 1
                if attempt >= self.cfg.max_retries:
                    raise TeacherUnavailable(
                        f"teacher request POST {_redact_url(url)} failed after {attempt + 1} attempt(s); "
                        f"last error: {failure.reason}",
                        url=_redact_url(url),
                        status=failure.status,
                    ) from None
                attempt += 1
                usage.retries += 1
                await asyncio.sleep(self._report_retry("POST", url, attempt, failure))

    async def _attempt(self, url: str, payload: dict[str, Any]) -> Any:
        """One HTTP attempt; raises :class:`_Retryable` or :class:`TeacherError`, else returns the JSON body."""
        try:
            # httpx's timeout bounds each read; this bounds the whole exchange (a slow drip counts too)
            async with asyncio.timeout(self.cfg.timeout_s):
                resp = await self._http.post(url, json=payload)
        except TimeoutError:
            raise _Retryable(f"no complete response within {self.cfg.timeout_s:g}s") from None
        except httpx.TransportError as exc:
            raise _Retryable(_describe(exc)) from None
        status = resp.status_code
        if status == 200:
            try:
                return resp.json()
            except ValueError:
                raise _Retryable(f"malformed JSON body: {self._excerpt(resp.text)}", status=status) from None
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(
                f"HTTP {status}: {self._excerpt(resp.text)}",
                status=status,
                retry_after=_retry_after(resp.headers.get("retry-after")),
            )
        hint = " (check teacher.api_key)" if status in (401, 403) else ""
        hint = " (check teacher.model)" if status == 404 else hint
        raise TeacherError(
            f"teacher request POST {_redact_url(url)} was rejected with HTTP {status}{hint}: "
            f"{self._excerpt(resp.text)}",
            url=_redact_url(url),
            status=status,
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, max(self.cfg.backoff_max_s, _MAX_RETRY_AFTER_S))
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2**attempt)
        return base * (0.5 + 0.5 * self._rng.random())  # jitter spreads clients that failed together

    def _excerpt(self, text: str) -> str:
        text = " ".join(text.split())
        if self.cfg.api_key:
            text = text.replace(self.cfg.api_key, "***")
        return (
            text[:_EXCERPT_CHARS] + ("..." if len(text) > _EXCERPT_CHARS else "") if text else "(empty body)"
        )

    def _emit(self, level: str, type_: str, message: str, data: dict[str, Any]) -> None:
        log.log(logging.WARNING if level == "warning" else logging.INFO, message)
        if self._on_event is not None:
            self._on_event(level, type_, message, data)


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


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (number of seconds; HTTP dates are not worth honouring here)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _redact_url(url: str) -> str:
    """Hide credentials embedded in a URL (``https://user:pass@host``)."""
    return re.sub(r"//[^/@]+@", "//***@", url)


async def _with_client(
    cfg: TeacherConfig, on_event: EventHook | None, fn: Callable[[TeacherClient], Any]
) -> Any:
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
