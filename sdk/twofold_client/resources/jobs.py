"""``client.jobs``: create, inspect, cancel, retry and follow distillation jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Unpack, overload

import httpx

from .._base_client import AsyncAPIClient, PollOptions, RequestOptions, SyncAPIClient
from .._exceptions import JobWaitTimeout, TwofoldError
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
    """The deadline, event cursor and callbacks of one ``jobs.wait`` call (shared by sync and async)."""

    def __init__(
        self,
        job_id: str,
        poll_interval: float,
        timeout: float | None,
        on_event: Callable[[Event], object] | None,
        on_update: Callable[[Job], object] | None,
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

    def event(self, event: Event) -> None:
        """Hand one new event to ``on_event`` and advance the cursor past it."""
        assert self.on_event is not None
        self.on_event(event)
        self.after = event.id

    def done(self, job: Job) -> bool:
        """Whether to stop: the job finished (True) or the deadline passed (raises JobWaitTimeout)."""
        if self.on_update is not None:
            self.on_update(job)
        if job.finished:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise JobWaitTimeout(
                f"job {self.job_id} is still {job.status} (stage {job.current_stage}, "
                f"{job.progress:.0%}) after {self.timeout:g}s; call wait() again to keep waiting",
                job=job,
            )
        return False

    def pause(self) -> float:
        """Seconds to sleep before the next poll (never past the deadline)."""
        if self.deadline is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, self.deadline - time.monotonic()))


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
        **options: Unpack[PollOptions],
    ) -> Job:
        """Block until the job finishes and return it (whatever its final status: check ``job.status``).

        Args:
            poll_interval: seconds between polls.
            timeout: give up after this many seconds, raising ``JobWaitTimeout`` (which carries the last
                job seen); None waits forever.
            on_event: called with each new :class:`Event`, in order, including those before the call.
            on_update: called with the :class:`Job` after every poll (e.g. to draw progress).
        """
        waiter = _Waiter(job_id, poll_interval, timeout, on_event, on_update)
        while True:
            job = self.retrieve(job_id, **options)
            if on_event is not None:  # after retrieve, so that a finished job's last events are included
                for event in self.events(job_id, after=waiter.after, **options):
                    waiter.event(event)
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
        **options: Unpack[RequestOptions],
    ) -> SyncPage[Event] | EventStream:
        """A job's events, oldest first.

        With ``stream=False`` (default): a page (iterate it for all events; ``after`` is an event id).
        With ``stream=True``: an :class:`EventStream` yielding events live over Server-Sent Events until the
        job finishes; it reconnects by itself with ``Last-Event-ID`` (start from ``last_event_id``, a
        ``seq``, to skip events already seen).
        """
        path = f"/v1/jobs/{job_id}/events"
        if not stream:
            params = list_params(limit=limit, after=after)
            return self._client.get_page(path, SyncPage[Event], params=params, options=options)

        def connect(headers: dict[str, str]) -> httpx.Response:
            opts = _stream_options(options, headers)
            return self._client.request("GET", path, params={"stream": "true"}, stream=True, options=opts)

        max_reconnects = options.get("max_retries", self._client.max_retries)
        return EventStream(connect, max_reconnects=max_reconnects, last_event_id=last_event_id)


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
        **options: Unpack[PollOptions],
    ) -> Job:
        """Wait until the job finishes and return it; see :meth:`Jobs.wait` (callbacks are plain functions)."""
        waiter = _Waiter(job_id, poll_interval, timeout, on_event, on_update)
        while True:
            job = await self.retrieve(job_id, **options)
            if on_event is not None:
                async for event in self.events(job_id, after=waiter.after, **options):
                    waiter.event(event)
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

        max_reconnects = options.get("max_retries", self._client.max_retries)
        return AsyncEventStream(connect, max_reconnects=max_reconnects, last_event_id=last_event_id)
