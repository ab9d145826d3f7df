"""Schemas shared by every domain: the list envelope and the error body."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class ListOut(BaseModel, Generic[T]):
    """A page of objects: ``{"object": "list", "data": [...], "has_more": bool}``."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool


class ErrorDetail(BaseModel):
    """What went wrong: a stable code, a message for people, and the offending field or upload line."""

    code: str
    message: str
    param: str | None = None


class ErrorOut(BaseModel):
    """The one error body."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the error body for ``statuses``."""
    return {s: {"model": ErrorOut} for s in statuses}


#: Text without control characters (PostgreSQL cannot store NUL, and none belongs in names or filters).
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"
#: Metadata keys: letters, digits and ``_ . : -`` (they appear in ``?metadata[key]=`` filters).
METADATA_KEY = r"^[A-Za-z0-9_.:-]{1,64}$"


class StrictModel(BaseModel):
    """A request body that rejects unknown fields (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")
