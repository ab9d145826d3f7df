"""API keys: ``tf_`` + 32 random bytes (URL-safe base64), stored only as their sha256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from twofold.store.models import ApiKey, Tenant, utcnow

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


def list_api_keys(session: Session, *, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """Every key (revoked ones included) with its tenant's name, oldest first; only ``tenant_name``'s when
    given."""
    stmt = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_name is not None:
        stmt = stmt.where(Tenant.name == tenant_name)
    return [(key, name) for key, name in session.execute(stmt.order_by(ApiKey.created_at, ApiKey.id))]


def revoke_api_key(session: Session, key: str) -> ApiKey:
    """Revoke the key whose id or shown prefix (``tf_...``, from ``list_api_keys``) is ``key``; every request
    with it fails from the commit on. Revoking a revoked key keeps its first revocation time.

    Raises:
        ValueError: no key matches, or the prefix matches several (give the id then).
    """
    try:
        rows = [row] if (row := session.get(ApiKey, uuid.UUID(key))) is not None else []
    except ValueError:
        rows = list(session.scalars(select(ApiKey).where(ApiKey.prefix == key)))
    if not rows:
        raise ValueError(f"no API key with id or prefix {key!r}; `twofold apikey list` shows them")
    if len(rows) > 1:
        raise ValueError(f"{len(rows)} keys start with {key!r}; give the key's id instead")
    row = rows[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
