"""The ``twofold`` command. Subcommand groups live in their own modules and import heavy packages lazily,
so ``twofold jobs list`` never imports torch."""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click command or group
_COMMANDS = {
    "run": "twofold.cli.local:run_cmd",
    "demo": "twofold.cli.local:demo_cmd",
    "teacher": "twofold.cli.teacher:teacher",
    "serve": "twofold.cli.service:serve",
    "worker": "twofold.cli.service:worker",
    "db": "twofold.cli.service:db",
    "apikey": "twofold.cli.service:apikey",
    "jobs": "twofold.cli.client:jobs",
    "datasets": "twofold.cli.client:datasets",
    "checkpoints": "twofold.cli.client:checkpoints",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a part not installed (or not built yet)
            error = exc
            return click.Command(name, help=f"(unavailable: {error})", callback=lambda: _fail(error))


def _fail(exc: Exception) -> None:
    raise click.ClickException(f"this command is unavailable: {exc}")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="twofold")
def cli() -> None:
    """twofold: distil a large language model into a small one by transferring both its answers and its
    reward signal (teacher sampling -> SFT -> pseudo-labels -> reward model -> RL -> evaluation)."""


def main() -> None:
    """Console-script entry point."""
    cli()
