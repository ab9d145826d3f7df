"""``twofold serve``, ``twofold worker``, ``twofold db upgrade|check`` and ``twofold apikey create|list|revoke``.

All read the ``TWOFOLD_*`` settings (see ``store/settings.py`` and docs/service.md)."""

from __future__ import annotations

import sys

import click

from twofold.store.settings import Settings
from twofold.store.stages import Queue


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, help="Port to listen on.")
@click.option(
    "--migrate/--no-migrate",
    default=None,
    help="Upgrade the database schema first [default: yes on SQLite, no on PostgreSQL].",
)
@click.option("--log-level", default="info", show_default=True, help="uvicorn log level.")
def serve(host: str, port: int, migrate: bool | None, log_level: str) -> None:
    """Run the API. Without TWOFOLD_BROKER_URL, jobs run in this process (SQLite by default); with it, they
    are sent to Celery workers (`twofold worker`)."""
    import uvicorn

    from twofold.api.main import create_app
    from twofold.store.dispatch import Dispatcher
    from twofold.store.migrate import upgrade

    settings = Settings()
    if migrate or (migrate is None and settings.database_url.startswith("sqlite")):
        upgrade(settings.database_url)
    dispatcher: Dispatcher | None = None
    if settings.embedded:
        from twofold.store.artifacts import ArtifactStore
        from twofold.store.db import make_engine, make_session_factory
        from twofold.workers.embedded import EmbeddedDispatcher
        from twofold.workers.runner import Runtime

        embedded = EmbeddedDispatcher(threads=settings.embedded_threads)
        embedded.bind(
            Runtime(
                settings=settings,
                session_factory=make_session_factory(make_engine(settings.database_url)),
                artifacts=ArtifactStore(settings.artifacts_url),
                dispatcher=embedded,
            )
        )
        dispatcher = embedded
    mode = (
        "in-process runner" if settings.embedded else f"Celery broker {_safe_url(settings.broker_url or '')}"
    )
    click.echo(f"twofold API on http://{host}:{port} ({mode}; database {_safe_url(settings.database_url)})")
    uvicorn.run(create_app(settings, dispatcher=dispatcher), host=host, port=port, log_level=log_level)


@click.command()
@click.option(
    "--queues",
    "-Q",
    default="gpu,io,default",
    show_default=True,
    help="Comma-separated queues to consume: gpu (training), io (teacher sampling), default (sweeper).",
)
@click.option("--concurrency", "-c", default=1, show_default=True, help="Stage processes in this worker.")
@click.option("--beat/--no-beat", default=False, help="Also run the scheduler of the stale-stage sweeper.")
@click.option("--loglevel", "-l", default="info", show_default=True, help="Celery log level.")
def worker(queues: str, concurrency: int, beat: bool, loglevel: str) -> None:
    """Run a Celery worker for the given queues (one task per process at a time)."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in Queue.__members__]
    if not names or unknown:
        raise click.BadParameter(
            f"unknown queue(s) {unknown}; use {', '.join(Queue.__members__)}", param_hint="--queues"
        )
    from twofold.workers.app import app, settings

    if not settings.broker_url:
        raise click.ClickException("set TWOFOLD_BROKER_URL (e.g. redis://127.0.0.1:6379/0) to run workers")
    argv = [
        "worker",
        f"--queues={','.join(names)}",
        f"--concurrency={concurrency}",
        "--prefetch-multiplier=1",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        schedule = settings.local_work_dir / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={schedule}"]
    app.worker_main(argv)


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Migrate the database at TWOFOLD_DATABASE_URL to the latest schema."""
    from twofold.store.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database {_safe_url(settings.database_url)} is at {revision}")


@db.command("check")
def db_check() -> None:
    """Exit non-zero if the migrated schema differs from the models."""
    from alembic.util.exc import CommandError

    from twofold.store.migrate import check

    settings = Settings()
    try:
        check(settings.database_url)
    except CommandError as exc:
        click.echo(f"schema check failed: {exc}", err=True)
        sys.exit(1)
    click.echo("schema matches the models")


@click.group()
def apikey() -> None:
    """API keys."""


@apikey.command("create")
@click.option("--tenant", required=True, help="Tenant name (created if it does not exist).")
def apikey_create(tenant: str) -> None:
    """Create an API key for TENANT and print it once (only its hash is stored)."""
    from twofold.store.db import make_engine, make_session_factory, transaction
    from twofold.store.keys import create_api_key

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            _, token = create_api_key(session, tenant_name=tenant)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from exc
    finally:
        engine.dispose()
    click.echo(token)
    click.echo(f"(API key for tenant {tenant!r}; it is shown only this once)", err=True)


@apikey.command("list")
@click.option("--tenant", help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
def apikey_list(tenant: str | None, as_json: bool) -> None:
    """List API keys (id, prefix, tenant, created, revoked), oldest first; tokens are never shown."""
    import json

    from twofold.store.db import make_engine, make_session_factory
    from twofold.store.keys import list_api_keys

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            rows = [
                {
                    "id": str(key.id),
                    "prefix": key.prefix,
                    "tenant": name,
                    "created_at": key.created_at.isoformat(),
                    "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
                }
                for key, name in list_api_keys(session, tenant_name=tenant)
            ]
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'id':<36}  {'prefix':<10}  {'created':<19}  {'revoked':<19}  tenant")
    for row in rows:
        created = str(row["created_at"])[:19].replace("T", " ")
        revoked = str(row["revoked_at"] or "-")[:19].replace("T", " ")
        click.echo(f"{row['id']:<36}  {row['prefix']:<10}  {created:<19}  {revoked:<19}  {row['tenant']}")


@apikey.command("revoke")
@click.argument("key")
def apikey_revoke(key: str) -> None:
    """Revoke the API key KEY (its id, or its prefix as `apikey list` shows it); requests with it fail with
    401 at once, and its open event streams end within a second."""
    from twofold.store.db import make_engine, make_session_factory, transaction
    from twofold.store.keys import revoke_api_key

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            row = revoke_api_key(session, key)
            revoked_at = row.revoked_at
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY") from exc
    finally:
        engine.dispose()
    click.echo(f"revoked API key {row.id} ({row.prefix}...) at {revoked_at:%Y-%m-%d %H:%M:%S} UTC")


def _safe_url(url: str) -> str:
    """A URL with any password masked."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]
