"""Finish a POST: commit its changes together with the ``Idempotency-Key`` record, run what must follow the
commit (enqueue), and replay the first response when the same key comes again."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from twofold.api.deps import IdempotencyRequest, Principal
from twofold.api.errors import Conflict
from twofold.store.models import IdempotencyKey, utcnow

KEY_TTL = timedelta(hours=24)


@dataclass
class Outcome:
    """What a POST service produced (flushed, not committed) and what to do after the commit or instead of it."""

    body: BaseModel
    after_commit: list[Callable[[], Any]] = field(default_factory=list)
    on_abort: list[Callable[[], Any]] = field(default_factory=list)


def fingerprint(payload: Any) -> str:
    """A stable hash of a request's meaningful content (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _replay(session: Session, who: Principal, idem: IdempotencyRequest, digest: str) -> JSONResponse | None:
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == who.tenant_id,
            IdempotencyKey.route == idem.route,
            IdempotencyKey.key == idem.key,
            IdempotencyKey.created_at < utcnow() - KEY_TTL,
        )
    )
    row = session.scalar(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == who.tenant_id,
            IdempotencyKey.route == idem.route,
            IdempotencyKey.key == idem.key,
        )
    )
    if row is None:
        return None
    if row.request_hash != digest:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body; use a new key",
            param="Idempotency-Key",
        )
    return JSONResponse(row.response, status_code=row.status_code, headers={"Idempotent-Replayed": "true"})


def respond(
    session: Session,
    *,
    who: Principal,
    idem: IdempotencyRequest,
    request_hash: str,
    status_code: int,
    produce: Callable[[], Outcome],
) -> JSONResponse:
    """Replay a stored response for a repeated key, else run ``produce``, commit it with the key record and
    run its after-commit hooks. A concurrent request with the same key that commits first wins; this one
    then replays it."""
    if idem.key is not None:
        replayed = _replay(session, who, idem, request_hash)
        if replayed is not None:
            return replayed
    outcome = produce()
    body = outcome.body.model_dump(mode="json")
    if idem.key is not None:
        session.add(
            IdempotencyKey(
                tenant_id=who.tenant_id,
                route=idem.route,
                key=idem.key,
                request_hash=request_hash,
                status_code=status_code,
                response=body,
            )
        )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        for hook in outcome.on_abort:
            hook()
        replayed = _replay(session, who, idem, request_hash) if idem.key is not None else None
        if replayed is None:
            raise
        return replayed
    for hook in outcome.after_commit:
        hook()
    return JSONResponse(body, status_code=status_code)
