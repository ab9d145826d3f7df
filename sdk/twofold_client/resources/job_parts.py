"""Sub-resources of a job: ``client.jobs.checkpoints``, ``.evaluations``, ``.reward_labels``, ``.samples``,
``.stages`` and ``.metrics``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal, Unpack

from .._archive import safe_extract
from .._base_client import RequestOptions
from ..pagination import AsyncPage, AsyncPaginator, AsyncRewardLabelPage, RewardLabelPage, SyncPage
from ..types import Checkpoint, Evaluation, MetricPoint, RewardLabel, Sample, StageRun
from ._shared import AsyncAPIResource, SyncAPIResource, list_params

__all__ = [
    "Checkpoints",
    "AsyncCheckpoints",
    "Evaluations",
    "AsyncEvaluations",
    "RewardLabels",
    "AsyncRewardLabels",
    "Samples",
    "AsyncSamples",
    "Stages",
    "AsyncStages",
    "Metrics",
    "AsyncMetrics",
]

SampleSource = Literal["teacher", "student"]


def _download_target(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Create ``out_dir`` and a temporary file for the archive (outside ``out_dir``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tar.gz", prefix="twofold-checkpoint-")
    os.close(fd)
    return out, Path(tmp)


def _extract(tmp: Path, out: Path) -> Path:
    try:
        safe_extract(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class Checkpoints(SyncAPIResource):
    """Saved models of a job (policy after SFT/RL, reward model)."""

    def list(
        self,
        job_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> SyncPage[Checkpoint]:
        """List a job's checkpoints."""
        params = list_params(limit=limit, after=after)
        return self._client.get_page(
            f"/v1/jobs/{job_id}/checkpoints", SyncPage[Checkpoint], params=params, options=options
        )

    def download(
        self,
        job_id: str,
        checkpoint_id: str,
        *,
        out_dir: str | os.PathLike[str],
        **options: Unpack[RequestOptions],
    ) -> Path:
        """Download a checkpoint and extract it into ``out_dir`` (created if missing).

        The archive is checked before extraction: a member that would land outside ``out_dir`` raises
        ``UnsafeArchiveError``. Returns ``out_dir``, which then is the Hugging Face model directory
        (``config.json``, ``*.safetensors``, tokenizer files), loadable with ``from_pretrained(out_dir)``.
        """
        out, tmp = _download_target(out_dir)
        path = f"/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/download"
        response = self._client.request("GET", path, stream=True, options=options)
        try:
            with tmp.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
        finally:
            response.close()
        return _extract(tmp, out)


class AsyncCheckpoints(AsyncAPIResource):
    """Saved models of a job (policy after SFT/RL, reward model)."""

    def list(
        self,
        job_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncPaginator[Checkpoint, AsyncPage[Checkpoint]]:
        """List a job's checkpoints."""
        params = list_params(limit=limit, after=after)
        return AsyncPaginator(
            lambda: self._client.get_page(
                f"/v1/jobs/{job_id}/checkpoints", AsyncPage[Checkpoint], params=params, options=options
            )
        )

    async def download(
        self,
        job_id: str,
        checkpoint_id: str,
        *,
        out_dir: str | os.PathLike[str],
        **options: Unpack[RequestOptions],
    ) -> Path:
        """Download a checkpoint and extract it safely into ``out_dir``; see :meth:`Checkpoints.download`."""
        out, tmp = _download_target(out_dir)
        path = f"/v1/jobs/{job_id}/checkpoints/{checkpoint_id}/download"
        response = await self._client.request("GET", path, stream=True, options=options)
        try:
            with tmp.open("wb") as fh:
                async for chunk in response.aiter_bytes():
                    fh.write(chunk)
        finally:
            await response.aclose()
        return _extract(tmp, out)


class Evaluations(SyncAPIResource):
    """Benchmark scores of a job's models."""

    def list(self, job_id: str, **options: Unpack[RequestOptions]) -> SyncPage[Evaluation]:
        """List the accuracy of each model (teacher, sft, rl) on each benchmark, with 95% intervals."""
        return self._client.get_page(f"/v1/jobs/{job_id}/evaluations", SyncPage[Evaluation], options=options)


class AsyncEvaluations(AsyncAPIResource):
    """Benchmark scores of a job's models."""

    def list(
        self, job_id: str, **options: Unpack[RequestOptions]
    ) -> AsyncPaginator[Evaluation, AsyncPage[Evaluation]]:
        """List the accuracy of each model (teacher, sft, rl) on each benchmark, with 95% intervals."""
        return AsyncPaginator(
            lambda: self._client.get_page(
                f"/v1/jobs/{job_id}/evaluations", AsyncPage[Evaluation], options=options
            )
        )


class RewardLabels(SyncAPIResource):
    """Self-supervised pseudo-labels of a job."""

    def list(
        self,
        job_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> RewardLabelPage:
        """List pseudo-labels; the page's ``summary`` holds kept/dropped counts, positive rate and the
        agreement histogram over all labels of the job."""
        params = list_params(limit=limit, after=after)
        return self._client.get_page(
            f"/v1/jobs/{job_id}/reward-labels", RewardLabelPage, params=params, options=options
        )


class AsyncRewardLabels(AsyncAPIResource):
    """Self-supervised pseudo-labels of a job."""

    def list(
        self,
        job_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncPaginator[RewardLabel, AsyncRewardLabelPage]:
        """List pseudo-labels; the first page's ``summary`` holds statistics over all of them."""
        params = list_params(limit=limit, after=after)
        return AsyncPaginator(
            lambda: self._client.get_page(
                f"/v1/jobs/{job_id}/reward-labels", AsyncRewardLabelPage, params=params, options=options
            )
        )


class Samples(SyncAPIResource):
    """Teacher and student responses of a job."""

    def list(
        self,
        job_id: str,
        *,
        source: SampleSource | None = None,
        question_id: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> SyncPage[Sample]:
        """List samples, oldest first, optionally of one ``source`` or one ``question_id``."""
        params = list_params(limit=limit, after=after, source=source, question_id=question_id)
        return self._client.get_page(
            f"/v1/jobs/{job_id}/samples", SyncPage[Sample], params=params, options=options
        )


class AsyncSamples(AsyncAPIResource):
    """Teacher and student responses of a job."""

    def list(
        self,
        job_id: str,
        *,
        source: SampleSource | None = None,
        question_id: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> AsyncPaginator[Sample, AsyncPage[Sample]]:
        """List samples, oldest first, optionally of one ``source`` or one ``question_id``."""
        params = list_params(limit=limit, after=after, source=source, question_id=question_id)
        return AsyncPaginator(
            lambda: self._client.get_page(
                f"/v1/jobs/{job_id}/samples", AsyncPage[Sample], params=params, options=options
            )
        )


class Stages(SyncAPIResource):
    """The stage runs of a job."""

    def list(self, job_id: str, **options: Unpack[RequestOptions]) -> SyncPage[StageRun]:
        """List the job's stages in run order, with status, progress, resolved config and final metrics."""
        return self._client.get_page(f"/v1/jobs/{job_id}/stages", SyncPage[StageRun], options=options)


class AsyncStages(AsyncAPIResource):
    """The stage runs of a job."""

    def list(
        self, job_id: str, **options: Unpack[RequestOptions]
    ) -> AsyncPaginator[StageRun, AsyncPage[StageRun]]:
        """List the job's stages in run order, with status, progress, resolved config and final metrics."""
        return AsyncPaginator(
            lambda: self._client.get_page(f"/v1/jobs/{job_id}/stages", AsyncPage[StageRun], options=options)
        )


class Metrics(SyncAPIResource):
    """Training curves of a job."""

    def list(
        self, job_id: str, *, stage: str | None = None, **options: Unpack[RequestOptions]
    ) -> SyncPage[MetricPoint]:
        """List metric points (oldest first), optionally of one stage; ``has_more`` tells if capped."""
        return self._client.get_page(
            f"/v1/jobs/{job_id}/metrics", SyncPage[MetricPoint], params={"stage": stage}, options=options
        )


class AsyncMetrics(AsyncAPIResource):
    """Training curves of a job."""

    def list(
        self, job_id: str, *, stage: str | None = None, **options: Unpack[RequestOptions]
    ) -> AsyncPaginator[MetricPoint, AsyncPage[MetricPoint]]:
        """List metric points (oldest first), optionally of one stage; ``has_more`` tells if capped."""
        return AsyncPaginator(
            lambda: self._client.get_page(
                f"/v1/jobs/{job_id}/metrics", AsyncPage[MetricPoint], params={"stage": stage}, options=options
            )
        )
