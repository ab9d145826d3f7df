"""``client.jobs``: create, inspect, cancel, retry and follow distillation jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Unpack, overload

import httpx

from .._base_client import AsyncAPIClient, PollOptions, Reconnect, RequestOptions, SyncAPIClient
from .._exceptions import APIError, JobWaitTimeout, TwofoldError
from .._streaming import AsyncEventStream, EventStream
from ..pagination import AsyncPage, AsyncPaginator, SyncPage
from ..types import Event, Job, JobStatus
from ._shared import AsyncAPIResource, SyncAPIResource, list_params, metadata_params
from .job_parts import (
    AsyncCheckpoints,
    AsyncEvaluations,
    AsyncMetrics,
    AsyncRewardLabels,
    AsyncSamples,
    AsyncStages,
    Checkpoints,
    Evaluations,
    Metrics,
    RewardLabels,
    Samples,
    Stages,
)

__all__ = ["Jobs", "AsyncJobs"]

PresetName = Literal["smoke", "demo"] | str


def _job_body(
    spec: Any, preset: str | None, dataset: str | None, metadata: Mapping[str, str] | None
) -> dict[str, Any]:
    if (spec is None) == (preset is None):
        raise TwofoldError("give exactly one of `spec` (a job spec mapping) or `preset` (e.g. 'smoke')")
    if spec is not None and hasattr(spec, "to_dict"):  # a core.configs.JobSpec, without importing core
        spec = spec.to_dict()
    body: dict[str, Any] = {"spec": dict(spec)} if spec is not None else {"preset": preset}
    if dataset is not None:
        body["dataset"] = dataset
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def _list_job_params(
    status: JobStatus | None, metadata: Mapping[str, str] | None, limit: int | None, after: str | None
) -> dict[str, Any]:
    return list_params(limit=limit, after=after, status=status, **metadata_params(metadata))


def _stream_options(options: RequestOptions, headers: dict[str, str]) -> RequestOptions:
    """Options of one SSE (re)connection: the Last-Event-ID header added to the caller's headers."""
    return {**options, "extra_headers": {**options.get("extra_headers", {}), **headers}}


class _Waiter:
    """The deadline, event cursor, callbacks and reconnect budget of one ``jobs.wait`` call (shared by sync and
    async)."""

    def __init__(
        self,
        job_id: str,
        poll_interval: float,
        timeout: float | None,
        on_event: Callable[[Event], object] | None,
        on_update: Callable[[Job], object] | None,
        reconnect_timeout: float,
    ) -> None:
        if poll_interval <= 0:
            raise TwofoldError(f"poll_interval must be > 0, got {poll_interval}")
        self.job_id = job_id
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.on_event = on_event
        self.on_update = on_update
        self.after: str | None = None
        self.job: Job | None = None
        self.reconnect = Reconnect(reconnect_timeout)

    def event(self, event: Event) -> None:
        """Hand one new event to ``on_event`` and advance the cursor past it."""
        assert self.on_event is not None
        self.on_event(event)
        self.after = event.id

    def done(self, job: Job) -> bool:
        """Whether to stop: the job finished (True) or the deadline passed (raises JobWaitTimeout)."""
        self.job = job
        self.reconnect.ok()
        if self.on_update is not None:
            self.on_update(job)
        if job.finished:
            return True
        self._check_deadline()
        return False

    def outage(self, exc: APIError) -> float:
        """A poll failed: seconds to wait before the next (never past the deadline), or raise ``exc`` when it
        is not an outage or the reconnect budget is spent."""
        delay = self.reconnect.delay(exc)
        self._check_deadline()
        return self._clip(delay)

    def pause(self) -> float:
        """Seconds to sleep before the next poll (never past the deadline)."""
        return self._clip(self.poll_interval)

    def _clip(self, seconds: float) -> float:
        if self.deadline is None:
            return seconds
        return max(0.0, min(seconds, self.deadline - time.monotonic()))

    def _check_deadline(self) -> None:
        if self.deadline is None or time.monotonic() < self.deadline:
            return
        job = self.job
        state = (
            f"still {job.status} (stage {job.current_stage}, {job.progress:.0%})" if job else "not seen yet"
        )
        raise JobWaitTimeout(
            f"job {self.job_id} is {state} after {self.timeout:g}s; call wait() again to keep waiting",
            job=job,
        )


class Jobs(SyncAPIResource):
    """Distillation jobs and their sub-resources."""

    def __init__(self, client: SyncAPIClient) -> None:
        super().__init__(client)
        self.checkpoints = Checkpoints(client)
        self.evaluations = Evaluations(client)
        self.reward_labels = RewardLabels(client)
        self.samples = Samples(client)
        self.stages = Stages(client)
        self.metrics = Metrics(client)

    def create(
        self,
        *,
        spec: Mapping[str, Any] | None = None,
        preset: PresetName | None = None,
        dataset: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Job:
        """Create a job from a full ``spec`` or a named ``preset``.

        Args:
            spec: a JobSpec mapping (teacher, student, data, sft, labels, reward_model, rl, evaluation, ...)
                or a ``core.configs.JobSpec``. The server validates it: a bad field raises
                ``UnprocessableEntityError`` whose ``param`` is the field path (``rl.batch_size``).
            preset: ``"smoke"`` or ``"demo"`` instead of a spec.
            dataset: id of an uploaded dataset to train on.
            metadata: string labels to filter jobs by later.
            idempotency_key: the same key with the same body returns the first job instead of a new one.

        Returns:
            The new :class:`Job` (status ``pending``).
        """
        body = _job_body(spec, preset, dataset, metadata)
        return self._client.post("/v1/jobs", Job, json=body, idempotency_key=idempotency_key, options=options)

    def retrieve(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """Get a job with its stages, progress and (once finished) summary."""
        return self._client.get(f"/v1/jobs/{job_id}", Job, options=options)

    def list(
        self,
        *,
        status: JobStatus | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int | None = None,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> SyncPage[Job]:
        """List jobs, newest first, optionally filtered by status and metadata labels (all must match)."""
        params = _list_job_params(status, metadata, limit, after)
        return self._client.get_page("/v1/jobs", SyncPage[Job], params=params, options=options)

    def cancel(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """Cancel a pending or running job; raises ``ConflictError`` if it already finished."""
        return self._client.post(f"/v1/jobs/{job_id}/cancel", Job, options=options)

    def retry(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """Re-run a failed or cancelled job from its first unfinished stage; ``ConflictError`` otherwise."""
        return self._client.post(f"/v1/jobs/{job_id}/retry", Job, options=options)

    def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        on_event: Callable[[Event], object] | None = None,
        on_update: Callable[[Job], object] | None = None,
        reconnect_timeout: float | None = None,
        **options: Unpack[PollOptions],
    ) -> Job:
        """Block until the job finishes and return it (whatever its final status: check ``job.status``).

        Args:
            poll_interval: seconds between polls.
            timeout: give up after this many seconds, raising ``JobWaitTimeout`` (which carries the last
                job seen); None waits forever.
            on_event: called with each new :class:`Event`, in order, including those before the call.
            on_update: called with the :class:`Job` after every poll (e.g. to draw progress).
            reconnect_timeout: while the server cannot be reached (connection errors, 502/503/504), keep
                polling with backoff for up to this many seconds of outage; default: the client's.
        """
        budget = self._client.reconnect_timeout if reconnect_timeout is None else reconnect_timeout
        waiter = _Waiter(job_id, poll_interval, timeout, on_event, on_update, budget)
        while True:
            try:
                job = self.retrieve(job_id, **options)
                if on_event is not None:  # after retrieve, so that a finished job's last events are included
                    for event in self.events(job_id, after=waiter.after, **options):
                        waiter.event(event)
            except APIError as exc:
                time.sleep(waiter.outage(exc))
                continue
            if waiter.done(job):
                return job
            time.sleep(waiter.pause())

    @overload
    def events(
        self,
        job_id: str,
        *,
        stream: Literal[False] = False,
        after: str | None = None,
        limit: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> SyncPage[Event]: ...

    @overload
    def events(
        self,
        job_id: str,
        *,
        stream: Literal[True],
        last_event_id: str | None = None,
        reconnect_timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> EventStream: ...

    def events(
        self,
        job_id: str,
        *,
        stream: bool = False,
        after: str | None = None,
        limit: int | None = None,
        last_event_id: str | None = None,
        reconnect_timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> SyncPage[Event] | EventStream:
        """A job's events, oldest first.

        With ``stream=False`` (default): a page (iterate it for all events; ``after`` is an event id).
        With ``stream=True``: an :class:`EventStream` yielding events live over Server-Sent Events until the
        job finishes; it reconnects by itself with ``Last-Event-ID`` (start from ``last_event_id``, a
        ``seq``, to skip events already seen), through outages of up to ``reconnect_timeout`` seconds
        (default: the client's).
        """
        path = f"/v1/jobs/{job_id}/events"
        if not stream:
            params = list_params(limit=limit, after=after)
            return self._client.get_page(path, SyncPage[Event], params=params, options=options)

        def connect(headers: dict[str, str]) -> httpx.Response:
            opts = _stream_options(options, headers)
            return self._client.request("GET", path, params={"stream": "true"}, stream=True, options=opts)

        budget = self._client.reconnect_timeout if reconnect_timeout is None else reconnect_timeout
        return EventStream(connect, reconnect_timeout=budget, last_event_id=last_event_id)


class AsyncJobs(AsyncAPIResource):
    """Distillation jobs and their sub-resources."""

    def __init__(self, client: AsyncAPIClient) -> None:
        super().__init__(client)
        self.checkpoints = AsyncCheckpoints(client)
        self.evaluations = AsyncEvaluations(client)
        self.reward_labels = AsyncRewardLabels(client)
        self.samples = AsyncSamples(client)
        self.stages = AsyncStages(client)
        self.metrics = AsyncMetrics(client)

    async def create(
        self,
        *,
        spec: Mapping[str, Any] | None = None,
        preset: PresetName | None = None,
        dataset: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Job:
        """Create a job from a full ``spec`` or a named ``preset``; see :meth:`Jobs.create`."""
        body = _job_body(spec, preset, dataset, metadata)
        return await self._client.post(
            "/v1/jobs", Job, json=body, idempotency_key=idempotency_key, options=options
        )

    async def retrieve(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """Get a job with its stages, progress and (once finished) summary."""
        return await self._client.get(f"/v1/jobs/{job_id}", Job, options=options)

    def list(
        self,
        *,
        status: JobStatus | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int | None = None,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncPaginator[Job, AsyncPage[Job]]:
        """List jobs, newest first: ``await`` for the first page or ``async for`` over all of them."""
        params = _list_job_params(status, metadata, limit, after)
        return AsyncPaginator(
            lambda: self._client.get_page("/v1/jobs", AsyncPage[Job], params=params, options=options)
        )

    async def cancel(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """Cancel a pending or running job; raises ``ConflictError`` if it already finished."""
        return await self._client.post(f"/v1/jobs/{job_id}/cancel", Job, options=options)

    async def retry(self, job_id: str, **options: Unpack[RequestOptions]) -> Job:
        """Re-run a failed or cancelled job from its first unfinished stage; ``ConflictError`` otherwise."""
        return await self._client.post(f"/v1/jobs/{job_id}/retry", Job, options=options)

    async def wait(
        self,
        job_id: str,
        *,
        poll_interval: float = 2.0,
        timeout: float | None = None,
        on_event: Callable[[Event], object] | None = None,
        on_update: Callable[[Job], object] | None = None,
        reconnect_timeout: float | None = None,
        **options: Unpack[PollOptions],
    ) -> Job:
        """Wait until the job finishes and return it; see :meth:`Jobs.wait` (callbacks are plain functions)."""
        budget = self._client.reconnect_timeout if reconnect_timeout is None else reconnect_timeout
        waiter = _Waiter(job_id, poll_interval, timeout, on_event, on_update, budget)
        while True:
            try:
                job = await self.retrieve(job_id, **options)
                if on_event is not None:
                    async for event in self.events(job_id, after=waiter.after, **options):
                        waiter.event(event)
            except APIError as exc:
                await asyncio.sleep(waiter.outage(exc))
                continue
            if waiter.done(job):
                return job
            await asyncio.sleep(waiter.pause())

    @overload
    def events(
        self,
        job_id: str,
        *,
        stream: Literal[False] = False,
        after: str | None = None,
        limit: int | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncPaginator[Event, AsyncPage[Event]]: ...

    @overload
    def events(
        self,
        job_id: str,
        *,
        stream: Literal[True],
        last_event_id: str | None = None,
        reconnect_timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncEventStream: ...

    def events(
        self,
        job_id: str,
        *,
        stream: bool = False,
        after: str | None = None,
        limit: int | None = None,
        last_event_id: str | None = None,
        reconnect_timeout: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncPaginator[Event, AsyncPage[Event]] | AsyncEventStream:
        """A job's events, oldest first: a paginator, or with ``stream=True`` a live
        :class:`AsyncEventStream` (``async for``); see :meth:`Jobs.events`."""
        path = f"/v1/jobs/{job_id}/events"
        if not stream:
            params = list_params(limit=limit, after=after)
            return AsyncPaginator(
                lambda: self._client.get_page(path, AsyncPage[Event], params=params, options=options)
            )

        async def connect(headers: dict[str, str]) -> httpx.Response:
            opts = _stream_options(options, headers)
            return await self._client.request(
                "GET", path, params={"stream": "true"}, stream=True, options=opts
            )

        budget = self._client.reconnect_timeout if reconnect_timeout is None else reconnect_timeout
        return AsyncEventStream(connect, reconnect_timeout=budget, last_event_id=last_event_id)
