"""Alembic environment: migrates the database named by ``sqlalchemy.url`` (set by ``store.migrate``) or by the
``TWOFOLD_DATABASE_URL`` setting. SQLite gets batch mode so that ALTERs work there too."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from twofold.store.db import make_engine
from twofold.store.models import Base, UTCDateTime

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from twofold.store.settings import Settings

    return Settings().database_url


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Write our timestamp type as a plain ``sa.DateTime(timezone=True)`` so migrations never import models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it."""
    url = _url()
    context.configure(
        url=url,
        target_metadata=Base.metadata,
        literal_binds=True,
        compare_type=True,
        render_item=render_item,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations against a live connection."""
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            compare_type=True,
            render_item=render_item,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
