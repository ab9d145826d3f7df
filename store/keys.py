"""API keys: ``tf_`` + 32 random bytes (URL-safe base64), stored only as their sha256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from twofold.store.models import ApiKey, Tenant

KEY_PREFIX = "tf_"


def hash_key(token: str) -> str:
    """The stored form of a key (hex sha256)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_api_key(session: Session, *, tenant_name: str) -> tuple[ApiKey, str]:
    """A new key for the tenant ``tenant_name`` (created if missing); returns the row and the token, which is
    not stored anywhere and must be shown to the user once."""
    if not tenant_name.strip():
        raise ValueError("tenant: give a non-empty tenant name")
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(id=uuid.uuid4(), name=tenant_name)
        session.add(tenant)
        session.flush()
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant_id=tenant.id, key_hash=hash_key(token), prefix=token[:10])
    session.add(row)
    session.flush()
    return row, token


def find_key(session: Session, token: str) -> ApiKey | None:
    """The live key row for ``token``, or None. The lookup is by hash, and the final comparison is in constant
    time."""
    if not token.startswith(KEY_PREFIX) or len(token) > 200:
        return None
    digest = hash_key(token)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row
