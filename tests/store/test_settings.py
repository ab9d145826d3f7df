"""The settings object: TWOFOLD_ environment variables, defaults, and combinations it refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from twofold.store.settings import Settings


def test_reads_twofold_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOFOLD_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("TWOFOLD_BROKER_URL", "redis://h:6379/0")
    monkeypatch.setenv("TWOFOLD_RATE_LIMIT_PER_MINUTE", "7")
    s = Settings()
    assert (s.database_url, s.broker_url, s.rate_limit_per_minute, s.embedded) == (
        "postgresql+psycopg://u@h/db",
        "redis://h:6379/0",
        7,
        False,
    )


def test_defaults_are_the_embedded_sqlite_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TWOFOLD_DATABASE_URL", "TWOFOLD_BROKER_URL", "TWOFOLD_ARTIFACTS_URL", "TWOFOLD_WORK_DIR"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.database_url == "sqlite:///./twofold.db" and s.embedded
    assert s.local_work_dir.name == ".artifacts"


def test_soft_time_limit_must_be_below_the_hard_one() -> None:
    with pytest.raises(ValidationError, match="stage_soft_time_limit_s must be below"):
        Settings(stage_soft_time_limit_s=100, stage_time_limit_s=100)


def test_a_heartbeat_slower_than_the_stale_threshold_is_refused() -> None:
    with pytest.raises(ValidationError, match="stale_after_s must exceed"):
        Settings(heartbeat_interval_s=10, stale_after_s=15)
