"""The one settings object of the service (API, workers, CLI), read from ``TWOFOLD_*`` environment variables.

Build it once at the entry point (``Settings()``) and pass it down; tests build their own with overrides.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration. Every field can be set as ``TWOFOLD_<FIELD>`` (e.g. ``TWOFOLD_DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="TWOFOLD_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite:///./twofold.db",
        description="SQLAlchemy URL; PostgreSQL in production, e.g. postgresql+psycopg://user@host/db",
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (redis://...). Unset: `twofold serve` runs jobs in-process"
    )
    broker_key_prefix: str = Field(
        default="",
        description="prefix for every Redis key of the broker (to share one Redis between deployments)",
    )
    artifacts_url: str = Field(
        default="./.artifacts",
        description="artifact root: a local directory or an fsspec URL (s3://bucket/prefix)",
    )
    work_dir: str | None = Field(
        default=None,
        description="local directory (shared by all workers) where stages run; defaults to the artifact "
        "root when that is local, else ./.work",
    )
    data_dir: str = Field(
        default="./data", description="where the built-in datasets gsm8k/ and mmlu_pro/ live"
    )
    models_dir: str = Field(
        default="./models", description="root for `student.path` in job specs (relative paths)"
    )
    max_upload_bytes: int = Field(
        default=200 * 1024 * 1024, description="dataset upload size limit (413 above)", ge=1
    )
    max_request_bytes: int = Field(
        default=1024 * 1024, description="size limit of a job or spec request body (JSON)", ge=1
    )
    max_line_bytes: int = Field(
        default=1024 * 1024, description="length limit of one line of an uploaded dataset (413 above)", ge=1
    )
    max_streams_per_key: int = Field(
        default=20, description="open event streams (SSE) per API key and API process (429 above)", ge=1
    )
    max_streams: int = Field(
        default=1000, description="open event streams (SSE) per API process, all keys (503 above)", ge=1
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for GET /metrics; set, /metrics needs it and adds job and stage-run counts; "
        "unset, /metrics is open and has only the process's HTTP and stream figures",
    )
    rate_limit_per_minute: int = Field(
        default=1200, description="requests per minute per API key (0 = no limit)", ge=0
    )
    teacher_base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="teacher endpoint used by the `smoke` and `demo` presets",
    )
    teacher_model: str = Field(default="tiny-teacher", description="teacher model name used by the presets")
    heartbeat_interval_s: float = Field(
        default=2.0, description="how often a running stage touches its row", gt=0
    )
    stale_after_s: float = Field(
        default=60.0, description="a running stage with an older heartbeat is requeued", gt=0
    )
    sweep_interval_s: float = Field(
        default=15.0, description="how often the sweeper looks for stale stages", gt=0
    )
    stage_soft_time_limit_s: int = Field(
        default=48 * 3600, description="a stage is asked to stop after this", ge=1
    )
    stage_time_limit_s: int = Field(default=48 * 3600 + 600, description="a stage is killed after this", ge=1)
    visibility_timeout_s: int = Field(
        default=6 * 3600,
        description="Redis redelivers an unacknowledged task after this (the sweeper is faster)",
        ge=1,
    )
    embedded_threads: int = Field(default=1, description="stage threads of the in-process runner", ge=1)
    db_batch_size: int = Field(default=500, description="rows per bulk insert", ge=1)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.stage_soft_time_limit_s >= self.stage_time_limit_s:
            raise ValueError(
                "stage_soft_time_limit_s must be below stage_time_limit_s so a stage can stop cleanly "
                f"(got {self.stage_soft_time_limit_s} >= {self.stage_time_limit_s})"
            )
        if self.stale_after_s <= 2 * self.heartbeat_interval_s:
            raise ValueError(
                "stale_after_s must exceed twice heartbeat_interval_s, or live stages look stale "
                f"(got {self.stale_after_s} <= 2 x {self.heartbeat_interval_s})"
            )
        return self

    @property
    def broker_transport_options(self) -> dict[str, object]:
        """Kombu transport options shared by the workers and the API's publisher."""
        options: dict[str, object] = {"visibility_timeout": self.visibility_timeout_s}
        if self.broker_key_prefix:
            options["global_keyprefix"] = self.broker_key_prefix
        return options

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: jobs run in-process."""
        return not self.broker_url

    @property
    def local_work_dir(self) -> Path:
        """The directory stages run in (one sub-directory per job)."""
        if self.work_dir:
            return Path(self.work_dir).resolve()
        if "://" not in self.artifacts_url or self.artifacts_url.startswith("file://"):
            return Path(self.artifacts_url.removeprefix("file://")).resolve()
        return Path("./.work").resolve()
