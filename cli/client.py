"""``twofold jobs | datasets | checkpoints``: drive a twofold server from the shell, through the Python SDK.

Every command takes ``--base-url`` / ``--api-key`` (or ``$TWOFOLD_BASE_URL`` / ``$TWOFOLD_API_KEY``, either on
the group or on the command) and ``--json`` for scripts. Exit status: 0 success, 1 an API or connection
error (printed as ``error: <message> (param: <field>)``), 2 a usage error, 3 a job that failed or was
cancelled while ``--wait`` was watching it.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from twofold_client import (
    DEFAULT_RECONNECT_TIMEOUT,
    APIStatusError,
    Checkpoint,
    Client,
    Event,
    Job,
    TwofoldError,
)
from twofold_client.types import JobStatus

EXIT_ERROR = 1
EXIT_JOB_FAILED = 3
STATUS_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)
reconnect_option = click.option(
    "--reconnect-timeout", type=click.FloatRange(0), default=DEFAULT_RECONNECT_TIMEOUT, show_default=True,
    envvar="TWOFOLD_RECONNECT_TIMEOUT",
    help="Seconds to keep reconnecting, with backoff, while the server cannot be reached (a restart).",
)  # fmt: skip


# --- connection options, client, errors --------------------------------------------------------------------------
def _connection_options(f: F) -> F:
    """``--base-url`` and ``--api-key``, accepted on a group and on each of its commands."""

    def remember(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        # ctx.meta is shared by the group and its command: a value typed on the command line wins over one
        # from the environment, wherever each was given.
        if value is not None and param.name:
            key = f"twofold.{param.name}"
            if ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE:
                ctx.meta[key] = value
            else:
                ctx.meta.setdefault(key, value)
        return value

    f = click.option(
        "--api-key", envvar="TWOFOLD_API_KEY", expose_value=False, callback=remember,
        help="API key (default: $TWOFOLD_API_KEY).",
    )(f)  # fmt: skip
    return click.option(
        "--base-url", envvar="TWOFOLD_BASE_URL", expose_value=False, callback=remember,
        help="Server URL, e.g. http://localhost:8080 (default: $TWOFOLD_BASE_URL).",
    )(f)  # fmt: skip


def _command(group: click.Group, name: str) -> Callable[[F], F]:
    """Register a command with the connection options and ``--json``, mapping SDK errors to exit status 1."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return f(*args, **kwargs)
            except TwofoldError as exc:
                err_console.print(_error_line(exc), markup=False, highlight=False)
                sys.exit(EXIT_ERROR)

        run = click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")(run)
        return group.command(name)(_connection_options(run))  # type: ignore[return-value]

    return decorate


def _error_line(exc: TwofoldError) -> str:
    if isinstance(exc, APIStatusError):
        text = f"error: {exc.message}"
        return f"{text} (param: {exc.param})" if exc.param else text
    return f"error: {exc}"


def _client() -> Client:
    """A client from the options given on the command or its group (then the environment)."""
    ctx = click.get_current_context()
    return Client(base_url=ctx.meta.get("twofold.base_url"), api_key=ctx.meta.get("twofold.api_key"))


def _print_json(value: BaseModel | Iterable[BaseModel]) -> None:
    if isinstance(value, BaseModel):
        click.echo(value.model_dump_json(indent=2))
    else:
        click.echo(json.dumps([item.model_dump(mode="json") for item in value], indent=2))


def _table(*columns: str) -> Table:
    """A plain table; ids and times never wrap or get cut (people copy them), other columns give way."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        keep = column in ("id", "created")
        table.add_column(column, no_wrap=keep, overflow="fold" if keep else "ellipsis")
    return table


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


# --- jobs --------------------------------------------------------------------------------------------------------
@click.group()
@_connection_options
def jobs() -> None:
    """Create, list, inspect, cancel, retry and follow jobs on a twofold server."""


def _parse_metadata(pairs: tuple[str, ...]) -> dict[str, str] | None:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--metadata")
        out[key] = value
    return out or None


def _load_job_file(path: Path) -> dict[str, Any]:
    from twofold.core.yaml_spec import SpecSyntaxError, load_spec_file

    try:
        return load_spec_file(path)
    except SpecSyntaxError as exc:
        where = f"{path}:{exc.line}" if exc.line is not None else str(path)
        raise click.BadParameter(f"{where}: {exc.message}", param_hint="-f") from None


@_command(jobs, "create")
@click.option("-f", "--file", "job_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Job spec (YAML, as for `twofold run`).")  # fmt: skip
@click.option("--preset", help="A server preset instead of a file: smoke or demo.")
@click.option("--dataset", help="Id of an uploaded dataset to train on.")
@click.option("-m", "--metadata", multiple=True, help="key=value label (repeatable).")
@click.option("--idempotency-key", help="Reuse to make a retried create return the first job.")
@click.option("--wait", is_flag=True, help="Follow the job with a live display until it finishes.")
@click.option("--poll-interval", type=float, default=2.0, show_default=True, help="Seconds between polls.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@reconnect_option
def create_job(
    job_file: Path | None,
    preset: str | None,
    dataset: str | None,
    metadata: tuple[str, ...],
    idempotency_key: str | None,
    wait: bool,
    poll_interval: float,
    timeout: float | None,
    reconnect_timeout: float,
    as_json: bool,
) -> None:
    """Create a job from a spec file (-f) or a preset (--preset); with --wait, follow it to the end."""
    if (job_file is None) == (preset is None):
        raise click.UsageError("give exactly one of -f/--file or --preset")
    spec = _load_job_file(job_file) if job_file is not None else None
    with _client() as client:
        job = client.jobs.create(
            spec=spec, preset=preset, dataset=dataset, metadata=_parse_metadata(metadata),
            idempotency_key=idempotency_key,
        )  # fmt: skip
        if not wait:
            _print_json(job) if as_json else console.print(f"created job {job.id} ({job.status})")
            return
        job = _follow(
            client.with_options(reconnect_timeout=reconnect_timeout), job, poll_interval=poll_interval,
            timeout=timeout, as_json=as_json,
        )  # fmt: skip
    _exit_for(job)


def _follow(client: Client, job: Job, *, poll_interval: float, timeout: float | None, as_json: bool) -> Job:
    """Wait for the job (through server restarts, within the client's reconnect budget); without --json draw
    each stage's progress live and print events as they come."""
    if as_json:
        job = client.jobs.wait(job.id, poll_interval=poll_interval, timeout=timeout)
        _print_json(job)
        return job
    with Live(_job_view(job), console=err_console, refresh_per_second=4) as live:
        job = client.jobs.wait(
            job.id, poll_interval=poll_interval, timeout=timeout,
            on_update=lambda j: live.update(_job_view(j)),
            on_event=lambda e: live.console.print(_event_line(e), highlight=False),
        )  # fmt: skip
    _print_outcome(job)
    return job


def _job_view(job: Job) -> Group:
    """The live display: a header line and one progress row per stage."""
    head = Text.assemble(f"job {job.id}  ", _status(job.status), f"  {job.progress:.0%}")
    table = _table("stage", "status", "progress", "", "done", "eta")
    for stage in job.stages:
        done = f"{stage.progress_done}/{stage.progress_total}" if stage.progress_total else ""
        eta = (
            f"{stage.eta_seconds:.0f}s" if stage.eta_seconds is not None and stage.status == "running" else ""
        )
        table.add_row(
            stage.name, _status(stage.status), ProgressBar(total=1.0, completed=stage.progress, width=30),
            f"{stage.progress:.0%}", done, eta,
        )  # fmt: skip
    return Group(head, table)


def _event_line(event: Event) -> str:
    return f"{_when(event.created_at)} {event.level:<7} {event.stage or '-':<16} {event.message}"


def _print_outcome(job: Job) -> None:
    console.print(Text.assemble(f"job {job.id} ", _status(job.status)))
    if job.error is not None:
        console.print(f"error in {job.error.stage}: {job.error.message}", markup=False, highlight=False)
    if job.summary:
        console.print_json(data=job.summary)


def _show_status(job: Job, as_json: bool) -> None:
    _print_json(job) if as_json else console.print(Text.assemble(f"job {job.id} ", _status(job.status)))


def _exit_for(job: Job) -> None:
    if job.status in ("failed", "cancelled"):
        sys.exit(EXIT_JOB_FAILED)


@_command(jobs, "list")
@click.option("--status", type=click.Choice(list(STATUS_STYLE)), help="Only jobs in this status.")
@click.option("-m", "--metadata", multiple=True, help="key=value label to match (repeatable).")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True, help="How many jobs to show.")
def list_jobs(status: JobStatus | None, metadata: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    with _client() as client:
        page = client.jobs.list(status=status, metadata=_parse_metadata(metadata), limit=min(limit, 100))
        found = list(itertools.islice(page, limit))
    if as_json:
        return _print_json(found)
    table = _table("id", "status", "preset", "stage", "progress", "created")
    for job in found:
        table.add_row(
            job.id, _status(job.status), job.preset or "-", job.current_stage or "-", f"{job.progress:.0%}",
            _when(job.created_at),
        )  # fmt: skip
    console.print(table)


@_command(jobs, "get")
@click.argument("job_id")
def get_job(job_id: str, as_json: bool) -> None:
    """Show a job: status, stages and, once finished, its summary."""
    with _client() as client:
        job = client.jobs.retrieve(job_id)
    if as_json:
        return _print_json(job)
    console.print(_job_view(job))
    _print_outcome(job)


@_command(jobs, "cancel")
@click.argument("job_id")
def cancel_job(job_id: str, as_json: bool) -> None:
    """Cancel a pending or running job."""
    with _client() as client:
        _show_status(client.jobs.cancel(job_id), as_json)


@_command(jobs, "retry")
@click.argument("job_id")
def retry_job(job_id: str, as_json: bool) -> None:
    """Re-run a failed or cancelled job from its first unfinished stage."""
    with _client() as client:
        _show_status(client.jobs.retry(job_id), as_json)


@_command(jobs, "logs")
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Stream new events live until the job finishes.")
@reconnect_option
def job_logs(job_id: str, follow: bool, reconnect_timeout: float, as_json: bool) -> None:
    """Print a job's events (one JSON object per line with --json); with -f, follow them live, resuming
    after the last one printed when the connection drops or the server restarts."""
    with _client() as client:
        events: Iterable[Event] = (
            client.jobs.events(job_id, stream=True, reconnect_timeout=reconnect_timeout)
            if follow
            else client.jobs.events(job_id)
        )
        for event in events:
            click.echo(event.model_dump_json() if as_json else _event_line(event))


# --- datasets ----------------------------------------------------------------------------------------------------
@click.group()
@_connection_options
def datasets() -> None:
    """Upload and list JSONL datasets."""


@_command(datasets, "upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Display name (default: the file name).")
def upload_dataset(file: Path, name: str | None, as_json: bool) -> None:
    """Upload a JSONL file: one {"question", "answer"?, "id"?} or {"messages", "answer"?} object a line."""
    with _client() as client:
        dataset = client.datasets.create(file=file, name=name)
    if as_json:
        return _print_json(dataset)
    console.print(f"uploaded dataset {dataset.id} ({dataset.name}: {dataset.row_count} rows)")


@_command(datasets, "list")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True, help="How many to show.")
def list_datasets(limit: int, as_json: bool) -> None:
    """List datasets, newest first (built-in ones included)."""
    with _client() as client:
        found = list(itertools.islice(client.datasets.list(limit=min(limit, 100)), limit))
    if as_json:
        return _print_json(found)
    table = _table("id", "name", "rows", "answers", "created")
    for ds in found:
        answers = "-" if ds.has_answers is None else ("yes" if ds.has_answers else "no")
        rows = "-" if ds.row_count is None else str(ds.row_count)
        table.add_row(ds.id, ds.name, rows, answers, "built-in" if ds.builtin else _when(ds.created_at))
    console.print(table)


# --- checkpoints -------------------------------------------------------------------------------------------------
@click.group()
@_connection_options
def checkpoints() -> None:
    """List and download a job's model checkpoints."""


@_command(checkpoints, "list")
@click.argument("job_id")
def list_checkpoints(job_id: str, as_json: bool) -> None:
    """List a job's checkpoints."""
    with _client() as client:
        found = list(client.jobs.checkpoints.list(job_id))
    if as_json:
        return _print_json(found)
    table = _table("id", "stage", "kind", "step", "size", "created")
    for ckpt in found:
        size = "-" if ckpt.size_bytes is None else f"{ckpt.size_bytes / 1e6:.1f} MB"
        table.add_row(
            ckpt.id, ckpt.stage or "-", ckpt.kind or "-", str(ckpt.step), size, _when(ckpt.created_at)
        )
    console.print(table)


def _checkpoint_rank(ckpt: Checkpoint, stages: list[str]) -> tuple[int, int, float]:
    """Later stage first (rl over sft; ``stages``: the job's stage names in order), then higher step, then
    newer."""
    stage = stages.index(ckpt.stage) if ckpt.stage in stages else -1
    return stage, ckpt.step or 0, ckpt.created_at.timestamp() if ckpt.created_at else 0.0


@_command(checkpoints, "download")
@click.argument("job_id")
@click.option("--checkpoint", "checkpoint_id", help="Checkpoint id (default: the job's latest policy).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to extract the Hugging Face model into.")  # fmt: skip
def download_checkpoint(job_id: str, checkpoint_id: str | None, out_dir: Path, as_json: bool) -> None:
    """Download a checkpoint and extract it (safely) into --out."""
    with _client() as client:
        if checkpoint_id is None:
            policies = [c for c in client.jobs.checkpoints.list(job_id) if c.kind == "policy"]
            if not policies:
                raise click.ClickException(f"job {job_id} has no policy checkpoint yet")
            stages = [st.name for st in client.jobs.retrieve(job_id).stages]  # in the order the job runs them
            checkpoint_id = max(policies, key=lambda c: _checkpoint_rank(c, stages)).id
        path = client.jobs.checkpoints.download(job_id, checkpoint_id, out_dir=out_dir)
    if as_json:
        click.echo(json.dumps({"job_id": job_id, "checkpoint_id": checkpoint_id, "path": str(path)}))
    else:
        console.print(f"checkpoint {checkpoint_id} extracted to {path}")
