"""The callbacks a stage reports to when it runs in the service: every output becomes rows (and artifacts).

:class:`DBCallbacks` implements ``core.records.PipelineCallbacks``, each call in its own short transaction
(callbacks come from the stage's threads and its event loop). Text is cut to its column's width and freed of NUL
characters, which PostgreSQL cannot store; the teacher API key is masked wherever it could appear.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import InstrumentedAttribute

from twofold.core.records import EvalResult, Label, StudentSample, TeacherSample
from twofold.store import jobs as ops
from twofold.store.artifacts import ArtifactStore, dir_digest
from twofold.store.db import transaction
from twofold.store.models import (
    Checkpoint,
    Evaluation,
    Job,
    MetricPoint,
    RewardLabel,
    StageRun,
    StudentSampleRow,
    TeacherSampleRow,
)

if TYPE_CHECKING:
    from twofold.workers.runner import Runtime


def storable(value: str) -> str:
    """Text PostgreSQL can store: NUL characters (a byte-level model can emit them) become U+FFFD."""
    return value.replace("\x00", "\ufffd")


def storable_json(value: Any) -> Any:
    """Plain JSON data without NUL characters."""
    return json.loads(storable(json.dumps(value, default=str)).replace("\\u0000", "\\ufffd"))


def _cell(column: InstrumentedAttribute[Any], value: str | None) -> str | None:
    """``value`` as ``column`` can store it (NULs replaced, cut to its width)."""
    return None if value is None else ops.fit(column, storable(value))


class DBCallbacks:
    """Persists everything a stage run reports; ``stop_requested`` is raised by the heartbeat (cancel, claim
    lost) or the runner's shutdown, and ``should_stop`` passes it to the stage."""

    def __init__(
        self, rt: Runtime, *, job_id: uuid.UUID, stage_run_id: uuid.UUID, secret: str | None
    ) -> None:
        self.rt = rt
        self.job_id = job_id
        self.stage_run_id = stage_run_id
        self.secret = secret
        self.stop_requested = threading.Event()  # cancel flag seen, claim lost, or runner shutting down
        self.claim_lost = False
        self._progress: tuple[int, int] | None = None
        self._batch = rt.settings.db_batch_size

    # --- plain callbacks -----------------------------------------------------------------------------------------
    def progress(self, stage: str, done: int, total: int) -> None:
        """Remember the latest progress; the heartbeat writes it."""
        self._progress = (int(done), int(total))

    def take_progress(self) -> tuple[int, int] | None:
        """The progress reported since the last call, if any."""
        value, self._progress = self._progress, None
        return value

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Upsert training-curve points (a resumed stage re-reporting a step overwrites it)."""
        rows = [
            {
                "job_id": self.job_id,
                "stage": stage,
                "step": int(step),
                "name": _cell(MetricPoint.name, str(k)),
                "value": float(v),
            }
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        with transaction(self.rt.session_factory) as s:
            ops.bulk_upsert(
                s, MetricPoint, rows, conflict=("job_id", "stage", "step", "name"), update_columns=("value",)
            )

    def scrub(self, text: str) -> str:
        """``text`` with the teacher API key masked and NUL characters replaced."""
        return storable(text.replace(self.secret, "***") if self.secret else text)

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Append an event (the teacher API key, if any, is masked)."""
        payload = storable_json(data or {})
        if self.secret:
            payload = json.loads(json.dumps(payload).replace(self.secret, "***"))
        with transaction(self.rt.session_factory) as s:
            ops.append_event(
                s,
                self.job_id,
                stage=stage,
                level=level,
                type=type,
                message=self.scrub(message),
                data=payload,
            )

    def should_stop(self) -> bool:
        """True once the job was cancelled (seen by the heartbeat) or this worker lost its claim."""
        return self.stop_requested.is_set()

    # --- persistence hooks -----------------------------------------------------------------------------------
    def teacher_samples(self, samples: list[TeacherSample]) -> None:
        """Persist teacher responses; a response already stored (same question, temperature, index) is kept."""
        rows = [
            {
                "job_id": self.job_id,
                "question_id": s.question_id,
                "temperature": s.key[1],
                "index": s.index,
                "text": storable(s.text),
                "answer": _cell(TeacherSampleRow.answer, s.answer),
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "finish_reason": s.finish_reason,
            }
            for s in samples
        ]
        with transaction(self.rt.session_factory) as s:
            ops.bulk_upsert(
                s,
                TeacherSampleRow,
                rows,
                conflict=("job_id", "question_id", "temperature", "index"),
                batch_size=self._batch,
            )

    def student_samples(self, samples: list[StudentSample]) -> None:
        """Persist student responses (a redrawn sample replaces the old one)."""
        rows = [
            {
                "job_id": self.job_id,
                "question_id": s.question_id,
                "index": s.index,
                "text": storable(s.text),
                "answer": _cell(StudentSampleRow.answer, s.answer),
            }
            for s in samples
        ]
        with transaction(self.rt.session_factory) as s:
            ops.bulk_upsert(
                s,
                StudentSampleRow,
                rows,
                conflict=("job_id", "question_id", "index"),
                update_columns=("text", "answer"),
                batch_size=self._batch,
            )

    def labels(self, labels: list[Label], stats: dict[str, Any]) -> None:
        """Replace the job's pseudo-labels and their statistics in one transaction."""
        rows = [
            {
                "job_id": self.job_id,
                "seq": seq,
                "question_id": lab.question_id,
                "source": lab.source,
                "index": lab.index,
                "temperature": lab.temperature,
                "text": storable(lab.text),
                "answer": _cell(RewardLabel.answer, lab.answer),
                "majority": _cell(RewardLabel.majority, lab.majority),
                "label": int(lab.label),
                "agreement": float(lab.agreement),
            }
            for seq, lab in enumerate(labels)
        ]
        with transaction(self.rt.session_factory) as s:
            s.execute(delete(RewardLabel).where(RewardLabel.job_id == self.job_id))
            ops.bulk_upsert(s, RewardLabel, rows, batch_size=self._batch)
            s.execute(update(Job).where(Job.id == self.job_id).values(label_stats=storable_json(stats)))

    def checkpoint(self, stage: str, kind: str, step: int, path: Path) -> None:
        """Snapshot a checkpoint directory into the artifact store and record its size and sha256."""
        key = ArtifactStore.checkpoint_key(self.job_id, stage, kind, step)
        size, sha = dir_digest(Path(path))
        self.rt.artifacts.put_dir(Path(path), key)
        with transaction(self.rt.session_factory) as s:
            ops.bulk_upsert(
                s,
                Checkpoint,
                [
                    {
                        "job_id": self.job_id,
                        "stage": stage,
                        "kind": kind,
                        "step": int(step),
                        "uri": key,
                        "size_bytes": size,
                        "sha256": sha,
                    }
                ],
                conflict=("job_id", "stage", "kind", "step"),
                update_columns=("uri", "size_bytes", "sha256"),
            )
            row = s.get(StageRun, self.stage_run_id)
            if row is not None:
                row.artifacts = {**(row.artifacts or {}), kind: key}
            ops.append_event(
                s,
                self.job_id,
                stage=stage,
                type="checkpoint.saved",
                message=f"{kind} checkpoint at step {step} ({size / 1e6:.1f} MB)",
                data={"kind": kind, "step": int(step), "size_bytes": size, "sha256": sha},
            )

    def evaluation(self, result: EvalResult) -> None:
        """Record a score (one row per model and benchmark) and keep its per-item results as an artifact."""
        with transaction(self.rt.session_factory) as s:
            existing = s.scalar(
                select(Evaluation.id).where(
                    Evaluation.job_id == self.job_id,
                    Evaluation.model == result.model,
                    Evaluation.benchmark == result.benchmark,
                )
            )
            evaluation_id = existing or uuid.uuid4()
            items_key = ArtifactStore.eval_items_key(self.job_id, evaluation_id)
            with self.rt.artifacts.open_write(items_key) as fh:
                for item in result.items:
                    fh.write((json.dumps(item, default=str) + "\n").encode())
            ops.bulk_upsert(
                s,
                Evaluation,
                [
                    {
                        "id": evaluation_id,
                        "job_id": self.job_id,
                        "model": result.model,
                        "benchmark": result.benchmark,
                        "accuracy": float(result.accuracy),
                        "ci_low": float(result.ci95[0]),
                        "ci_high": float(result.ci95[1]),
                        "n": int(result.n),
                        "extraction_version": str(result.extraction_version),
                        "items_uri": items_key,
                    }
                ],
                conflict=("job_id", "model", "benchmark"),
                update_columns=("accuracy", "ci_low", "ci_high", "n", "extraction_version", "items_uri"),
            )
