"""``twofold teacher``: the built-in OpenAI-compatible teacher server."""

from __future__ import annotations

import click


@click.group()
def teacher() -> None:
    """The built-in teacher server (OpenAI protocol: /v1/models, /v1/completions, /v1/chat/completions)."""


@teacher.command("serve")
@click.option(
    "--model", "model_dir", type=click.Path(file_okay=False), help="Local Hugging Face checkpoint dir."
)
@click.option("--tiny", is_flag=True, help="Serve a freshly initialised tiny-teacher (smoke tests).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, help="Port (0 = any free port).")
@click.option(
    "--served-model-name", default=None, help="Model id clients use [default: tiny-teacher or DIR name]."
)
@click.option("--max-batch-size", default=256, show_default=True, help="Rows per generation batch.")
@click.option("--threads", default=0, show_default=True, help="Torch CPU threads (0 = torch default).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda.")
@click.option(
    "--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True
)
@click.option("--seed", default=0, show_default=True, help="Initialisation seed for --tiny.")
def serve(
    model_dir: str | None,
    tiny: bool,
    host: str,
    port: int,
    served_model_name: str | None,
    max_batch_size: int,
    threads: int,
    device: str,
    dtype: str,
    seed: int,
) -> None:
    """Serve a teacher model until interrupted; prints the base URL (ending in /v1) when ready."""
    if (model_dir is None) == (not tiny):
        raise click.UsageError("give exactly one of --model DIR or --tiny")
    from twofold.teacher_server.app import launch  # imports torch; keep `twofold --help` fast

    try:
        launch(
            model_dir=model_dir,
            tiny=tiny,
            host=host,
            port=port,
            served_model_name=served_model_name,
            max_batch_size=max_batch_size,
            threads=threads,
            device=device,
            dtype=dtype,
            seed=seed,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
