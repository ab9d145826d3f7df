"""The ``twofold`` command. Subcommand groups live in their own modules and import heavy packages lazily,
so ``twofold jobs list`` never imports torch."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

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


def quiet_transformers() -> None:
    """Keep the terminal to twofold's own progress lines: turn off transformers' per-file progress bars
    ("Loading weights", "Writing model shards") here and in the processes this one starts (workers, teacher
    servers). Its warnings still show; a value the user set in the environment wins."""
    if "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return
    # transformers reads this once, on import, through huggingface_hub; the commands import it later
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # imported before the command line ran (a program embedding it, tests)
        hf_logging.disable_progress_bar()


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        """Run the command line, quieting transformers before any command imports it."""
        quiet_transformers()
        return super().main(args, *rest, **kwargs)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a dependency of that part is not installed
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
