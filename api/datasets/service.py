"""Datasets: validated JSONL uploads kept in the artifact store, plus the built-in benchmarks."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Iterable
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from twofold.api.datasets.schemas import DatasetOut
from twofold.api.deps import Page, Principal
from twofold.api.errors import NotFound, PayloadTooLarge, ValidationFailed
from twofold.api.idempotency import Outcome
from twofold.api.pagination import keyset_page, parse_id
from twofold.store.artifacts import CHUNK, ArtifactStore
from twofold.store.models import Dataset

BUILTIN_DATASETS: dict[str, str] = {
    "gsm8k": "GSM8K grade-school maths (from the configured data directory)",
    "mmlu_pro": "MMLU-Pro multiple choice, seeded 80/20 split (from the configured data directory)",
    "arithmetic": "generated multi-step arithmetic word problems",
}
_FIELDS = ("question", "messages", "answer", "id", "metadata")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ROLES = ("system", "user", "assistant")


def builtin_out(name: str) -> DatasetOut:
    """The API object of a built-in dataset."""
    return DatasetOut(
        id=name, name=name, row_count=None, has_answers=True, sha256=None, builtin=True, created_at=None
    )


def dataset_out(row: Dataset) -> DatasetOut:
    """The API object of an uploaded dataset."""
    return DatasetOut(
        id=str(row.id),
        name=row.name,
        row_count=row.row_count,
        has_answers=row.has_answers,
        sha256=row.sha256,
        builtin=False,
        created_at=row.created_at,
    )


def get_dataset(*, session: Session, who: Principal, dataset_id: str) -> Dataset:
    """The tenant's uploaded dataset ``dataset_id`` (404 for unknown ids and other tenants' datasets)."""
    parsed = parse_id(dataset_id)
    row = session.get(Dataset, parsed) if parsed else None
    if row is None or row.tenant_id != who.tenant_id:
        raise NotFound(f"no dataset {dataset_id!r}", param="dataset_id")
    return row


def retrieve(*, session: Session, who: Principal, dataset_id: str) -> DatasetOut:
    """One dataset, built-in or uploaded."""
    if dataset_id in BUILTIN_DATASETS:
        return builtin_out(dataset_id)
    return dataset_out(get_dataset(session=session, who=who, dataset_id=dataset_id))


def list_datasets(*, session: Session, who: Principal, page: Page) -> tuple[list[DatasetOut], bool]:
    """Built-in datasets first, then uploads newest first; ``after`` may name either kind."""
    names = list(BUILTIN_DATASETS)
    out: list[DatasetOut] = []
    after = page.after
    if after is None or after in BUILTIN_DATASETS:
        start = 0 if after is None else names.index(after) + 1
        out = [builtin_out(n) for n in names[start : start + page.limit]]
        after = None
        if len(out) == page.limit:
            any_upload = session.scalar(select(Dataset.id).where(Dataset.tenant_id == who.tenant_id).limit(1))
            return out, start + page.limit < len(names) or any_upload is not None
    rows, more = keyset_page(
        session,
        select(Dataset).where(Dataset.tenant_id == who.tenant_id),
        entity=Dataset,
        order=(Dataset.created_at, Dataset.id),
        page=Page(limit=page.limit - len(out), after=after),
        descending=True,
    )
    return out + [dataset_out(r) for r in rows], more


def file_sha256(fh: IO[bytes]) -> str:
    """The sha256 of a seekable upload (rewound afterwards)."""
    fh.seek(0)
    digest = hashlib.sha256()
    while block := fh.read(CHUNK):
        digest.update(block)
    fh.seek(0)
    return digest.hexdigest()


def create_dataset(
    *,
    session: Session,
    who: Principal,
    artifacts: ArtifactStore,
    upload: IO[bytes],
    filename: str | None,
    name: str | None,
    max_bytes: int,
    max_line_bytes: int,
) -> Outcome:
    """Validate the JSONL upload line by line while copying it into the artifact store; flush its row.

    Raises ``ValidationFailed`` with ``param="line N"`` / ``"line N: field"`` on the first bad line, and
    ``PayloadTooLarge`` over ``max_bytes`` in all or ``max_line_bytes`` in one line, leaving nothing behind.
    No line is read into memory past its limit."""
    dataset_id = uuid.uuid4()
    key = ArtifactStore.dataset_key(who.tenant_id, dataset_id)
    digest = hashlib.sha256()
    size = rows = answered = 0
    upload.seek(0)
    try:
        with artifacts.open_write(key) as out:
            seen: dict[str, int] = {}
            for line_no, raw in enumerate(_lines(upload, max_line_bytes), start=1):
                size += len(raw)
                if size > max_bytes:
                    raise PayloadTooLarge(f"the file is over the {max_bytes}-byte upload limit")
                digest.update(raw)
                out.write(raw)
                parsed = _parse_line(raw, line_no)
                if parsed is None:
                    continue
                rows += 1
                answered += parsed.get("answer") is not None
                if "id" in parsed:
                    if parsed["id"] in seen:
                        raise ValidationFailed(
                            f"duplicate id {parsed['id']!r} (first used on line {seen[parsed['id']]})",
                            param=f"line {line_no}: id",
                        )
                    seen[parsed["id"]] = line_no
        if rows == 0:
            raise ValidationFailed("the file has no rows; each line must be a JSON object", param="file")
    except BaseException:
        artifacts.delete(key)
        raise
    display = _CONTROL.sub("", name or os.path.basename(filename or "")).strip()[:200] or "dataset.jsonl"
    row = Dataset(
        id=dataset_id,
        tenant_id=who.tenant_id,
        name=display,
        format="jsonl",
        row_count=rows,
        has_answers=answered == rows,
        sha256=digest.hexdigest(),
        size_bytes=size,
        uri=key,
    )
    session.add(row)
    session.flush()
    return Outcome(body=dataset_out(row), on_abort=[lambda: artifacts.delete(key)])


def _lines(fh: IO[bytes], max_line_bytes: int) -> Iterable[bytes]:
    """The file's lines (newline kept), each read no further than one byte past the limit."""
    line_no = 0
    while raw := fh.readline(max_line_bytes + 2):  # the line, its newline and one byte to tell it is over
        line_no += 1
        if len(raw.rstrip(b"\n")) > max_line_bytes:
            raise PayloadTooLarge(
                f"line {line_no} is over the {max_line_bytes}-byte line limit; each line must be one JSON "
                "object",
                param=f"line {line_no}",
            )
        yield raw


def _parse_line(raw: bytes, line_no: int) -> dict[str, Any] | None:
    """The validated row of one line, None for a blank line; raises ``ValidationFailed`` naming the line."""
    where = f"line {line_no}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(f"not valid UTF-8 (byte {exc.start})", param=where) from exc
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"invalid JSON: {exc.msg} at column {exc.colno}", param=where) from exc
    except RecursionError:  # json gives up on deep nesting this way, not with a JSONDecodeError
        raise ValidationFailed("invalid JSON: nested too deeply", param=where) from None
    if not isinstance(row, dict):
        raise ValidationFailed(f"must be a JSON object, got {type(row).__name__}", param=where)
    for field in row:
        if field not in _FIELDS:
            raise ValidationFailed(f"unknown field; allowed: {', '.join(_FIELDS)}", param=f"{where}: {field}")
    if ("question" in row) == ("messages" in row):
        raise ValidationFailed(
            "give exactly one of `question` (a string) or `messages` (a chat)", param=where
        )
    if "question" in row and (not isinstance(row["question"], str) or not row["question"].strip()):
        raise ValidationFailed("must be a non-empty string", param=f"{where}: question")
    if "messages" in row:
        _check_messages(row["messages"], where)
    answer = row.get("answer")
    if answer is not None:
        ok = (
            isinstance(answer, str)
            and answer.strip()
            or (isinstance(answer, int | float) and not isinstance(answer, bool) and math.isfinite(answer))
        )
        if not ok:
            raise ValidationFailed("must be a non-empty string or a finite number", param=f"{where}: answer")
    if "id" in row and (
        not isinstance(row["id"], str)
        or not row["id"].strip()
        or len(row["id"]) > 200
        or _CONTROL.search(row["id"])
    ):
        raise ValidationFailed(
            "must be a non-empty string of at most 200 printable characters", param=f"{where}: id"
        )
    if "metadata" in row and not isinstance(row["metadata"], dict):
        raise ValidationFailed("must be an object", param=f"{where}: metadata")
    return row


def _check_messages(messages: Any, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValidationFailed("must be a non-empty list of {role, content}", param=f"{where}: messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise ValidationFailed(
                f"each message needs `role` ({', '.join(_ROLES)}) and string `content`",
                param=f"{where}: messages[{i}]",
            )
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise ValidationFailed("needs at least one non-empty user message", param=f"{where}: messages")
