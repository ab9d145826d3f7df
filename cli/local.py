"""``twofold run`` and ``twofold demo``: whole jobs in-process, everything written under an output directory."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import click

from twofold.cli.progress import FileCallbacks
from twofold.core.stages import STAGE_NAMES, Variant

#: The demo's gold-reward control: RL of the same SFT student against gold answers (an upper bound the method
#: does not reach for), then a greedy score of that checkpoint; each run under its own name.
GOLD_CONTROL = (
    Variant("rl_gold", "rl", {"rl": {"reward": "gold"}}),
    Variant(
        "evaluation_gold", "evaluation", {"evaluation": {"evaluate_teacher": False, "models": ["rl_gold"]}}
    ),
)


def _load_spec(path: Path) -> Any:
    from twofold.core.configs import ConfigError, JobSpec
    from twofold.core.yaml_spec import SpecSyntaxError, load_spec_file

    try:
        raw = load_spec_file(path)
    except SpecSyntaxError as exc:
        where = f"{path}:{exc.line}" if exc.line is not None else str(path)
        raise click.ClickException(f"{where}: {exc.message}") from None
    try:
        return JobSpec.from_dict(raw)
    except ConfigError as exc:
        raise click.ClickException(f"invalid job spec: {exc.param}: {exc.message}") from exc


def preflight(spec: Any) -> None:
    """Checks that need the filesystem or the network, run before anything is written: model and data paths
    exist and the teacher answers. Raises ClickException naming the field."""
    from twofold.core.teacher import TeacherError, check_sync

    if spec.student.path and not Path(spec.student.path, "config.json").exists():
        raise click.ClickException(
            f"student.path: {spec.student.path} is not a model directory (no config.json)"
        )
    if spec.data.path and not Path(spec.data.path).exists():
        raise click.ClickException(f"data.path: {spec.data.path} does not exist")
    try:
        served = check_sync(spec.teacher)
    except TeacherError as exc:
        raise click.ClickException(f"teacher.base_url: {exc}") from exc
    if served and spec.teacher.model not in served:
        raise click.ClickException(
            f"teacher.model: {spec.teacher.model!r} is not served at {spec.teacher.base_url} "
            f"(it serves: {', '.join(served)})"
        )


@click.command("run")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="output directory (default: runs/<job file name>)",
)
@click.option(
    "--stage",
    "stages",
    multiple=True,
    type=click.Choice(STAGE_NAMES),
    help="run only these stages (repeatable); default: all, in this order",
)
def run_cmd(job_file: Path, out_dir: Path | None, stages: tuple[str, ...]) -> None:
    """Run the distillation job in JOB_FILE (YAML) in this process.

    Finished stages found in the output directory are skipped, so a rerun resumes an interrupted job. An invalid
    spec, a missing model or data path, or an unreachable teacher fails before anything is written.
    """
    from twofold.core.pipeline import run_pipeline
    from twofold.core.stages.context import load_data

    spec = _load_spec(job_file)
    preflight(spec)
    try:
        data = load_data(spec.data)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"data: {exc}") from exc
    out = out_dir or Path("runs") / job_file.stem
    fresh = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec.to_dict(redact=True), indent=2))
    cb = FileCallbacks(out)
    try:
        with cb:
            summaries = run_pipeline(spec, data=data, workdir=out, callbacks=cb, stages=stages or STAGE_NAMES)
    except KeyboardInterrupt:
        click.echo(f"interrupted; rerun the same command to resume from {out}", err=True)
        sys.exit(130)
    except Exception as exc:
        if fresh and not any((out / "stages").glob("*.json")):
            shutil.rmtree(out, ignore_errors=True)  # nothing useful was produced: leave nothing behind
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
        raise click.ClickException(
            f"{type(exc).__name__}: {exc}\nfinished stages are kept in {out}; rerun the same command to resume"
        ) from exc
    ev = summaries.get("evaluation")
    if ev:
        click.echo(_eval_table({k: v for k, v in ev.items() if isinstance(v, dict)}))
    click.echo(f"outputs in {out}")


def _eval_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'model':<22}{'accuracy':>10}  95% CI"]
    for name, r in results.items():
        lo, hi = r["ci95"]
        lines.append(f"{name:<22}{r['accuracy'] * 100:>9.1f}%  [{lo * 100:.1f}, {hi * 100:.1f}]")
    return "\n".join(lines)


@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="where the teacher, the job (job/, or job-seed<N>/ for --data-seed N) and the summary go",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="also write the summary as JSON here",
)
@click.option("--retrain-teacher", is_flag=True, help="train the tiny teacher again even if one is cached")
@click.option("--no-gold-control", is_flag=True, help="skip the RL run with gold reward (a control)")
@click.option("--threads", type=int, default=0, help="torch threads for training (0 = all cores)")
@click.option(
    "--data-seed",
    type=click.IntRange(min=0, max=999),
    default=0,
    show_default=True,
    help="which arithmetic problems the job trains and tests on: 0 is the reported demo; 1-999 give dev splits "
    "for trying settings without touching the reported test problems (same teacher; written to job-seed<N>/ "
    "and summary-seed<N>.json; 1000 and up are the teacher's own training problems)",
)
def demo_cmd(
    out_dir: Path,
    json_path: Path | None,
    retrain_teacher: bool,
    no_gold_control: bool,
    threads: int,
    data_seed: int,
) -> None:
    """Distil a tiny arithmetic teacher into a 4x smaller student on CPU, end to end, and compare them.

    Trains a ~0.56M-parameter teacher on worked arithmetic solutions until it answers 75% of its validation
    problems (cached in OUT/teacher, retrained when its recipe changes), serves it with the built-in
    OpenAI-compatible teacher server on loopback, runs teacher sampling -> SFT -> pseudo-labels ->
    reward model -> PPO on a ~0.15M-parameter student, a PPO control with gold reward, and evaluates teacher,
    SFT student and RL students on 1,000 held-out problems, with paired differences (RL - SFT, RL - teacher) and
    their 95% intervals. SFT keeps the checkpoint whose answers agree most with the teacher's majority on 200
    questions it does not train on (no gold).
    """
    import torch

    from twofold.core.configs import JobSpec
    from twofold.core.pipeline import run_pipeline
    from twofold.core.presets import preset_spec
    from twofold.core.stages.context import load_data
    from twofold.core.tiny_teacher import is_current, train_tiny_teacher
    from twofold.teacher_server.process import start as start_teacher

    if threads:
        torch.set_num_threads(threads)
    t0 = time.monotonic()
    stages: dict[str, float] = {}
    teacher_dir = out_dir / "teacher"
    trained = retrain_teacher or not is_current(teacher_dir)
    if trained:
        if not retrain_teacher and (teacher_dir / "twofold_teacher.json").exists():
            click.echo(f"the teacher cached in {teacher_dir} was trained with an older recipe")
        shutil.rmtree(teacher_dir, ignore_errors=True)
        click.echo("training the tiny teacher on worked solutions ...")
        t = time.monotonic()
        with FileCallbacks(out_dir) as teacher_cb:  # a progress bar for the teacher too, closed afterwards
            meta = train_tiny_teacher(teacher_dir, callbacks=teacher_cb)
        stages["teacher_training"] = round(time.monotonic() - t, 1)
    else:
        click.echo(f"reusing the tiny teacher in {teacher_dir} (--retrain-teacher to train it again)")
        stages["teacher_training"] = 0.0
        meta = json.loads((teacher_dir / "twofold_teacher.json").read_text())
    teacher_training = {
        "steps": meta["steps"],
        "validation_accuracy": meta["checks"][-1]["accuracy"] if meta["checks"] else None,
    }
    if trained:
        last = teacher_training["validation_accuracy"]
        reached = f", validation accuracy {last:.1%}" if last is not None else ""
        click.echo(
            f"  teacher: {meta['parameters']:,} parameters, {meta['steps']} steps{reached}, {meta['seconds']:.0f}s"
        )
    suffix = f"-seed{data_seed}" if data_seed else ""  # a dev split never overwrites the reported demo
    job_dir = out_dir / f"job{suffix}"
    shutil.rmtree(job_dir, ignore_errors=True)
    server = start_teacher(
        teacher_dir, name="tiny-teacher", threads=threads, log_path=out_dir / "teacher_server.log"
    )
    try:
        click.echo(f"teacher server at {server.url}")
        raw = preset_spec("demo", teacher_base_url=server.url, teacher_model="tiny-teacher")
        raw["data"]["seed"] = data_seed
        spec = JobSpec.from_dict({**raw, "threads": threads})
        data = load_data(spec.data)
        runs: list[str | Variant] = [*STAGE_NAMES, *([] if no_gold_control else GOLD_CONTROL)]
        with FileCallbacks(job_dir) as cb:
            summaries = run_pipeline(spec, data=data, workdir=job_dir, callbacks=cb, stages=runs)
    finally:
        server.stop()
    for name in STAGE_NAMES:
        stages[name] = summaries[name]["seconds"]
    gold: dict[str, Any] | None = None
    if not no_gold_control:
        stages["rl_gold_control"] = round(sum(summaries[v.name]["seconds"] for v in GOLD_CONTROL), 1)
        gold = summaries["evaluation_gold"]["rl_gold"]
    ev = summaries["evaluation"]
    labels = json.loads((job_dir / "label_stats.json").read_text())
    rm = summaries["reward_model"]
    summary = {
        "data_seed": data_seed,
        "test_size": len(data.test),
        "teacher": _acc(ev.get("teacher")),
        "sft": _acc(ev["sft"]),
        "rl": _acc(ev["rl"]),
        "rl_gold": _acc(gold),
        "pseudo_labels": {
            "count": labels["labels"],
            "accuracy_vs_gold": labels["accuracy_vs_gold"],
            "majority_accuracy_vs_gold": labels["majority_accuracy_vs_gold"],
            "questions_kept": labels["questions_kept"],
            "questions_total": labels["questions_total"],
        },
        "reward_model": {"accuracy": rm.get("accuracy"), "pairwise_accuracy": rm.get("pairwise_accuracy")},
        "comparisons": _comparisons(job_dir / "eval_items"),
        "stages": stages,
        "seconds": round(time.monotonic() - t0, 1),
        "teacher_training": teacher_training,
        "machine": machine(),
    }
    click.echo(demo_table(summary))
    (out_dir / f"summary{suffix}.json").write_text(json.dumps(summary, indent=2))
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2))
        click.echo(f"summary written to {json_path}")


def machine() -> dict[str, Any]:
    """What the demo ran on. Its numbers depend on the CPU: the tiny models learn through a sharp transition whose
    step moves with float rounding, which differs between instruction sets (docs/results.md)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


#: The demo's paired comparisons: (key, model A, model B, label), read as "A - B".
COMPARISONS = [
    ("rl_vs_sft", "rl", "sft", "RL - SFT"),
    ("rl_vs_teacher", "rl", "teacher", "RL - teacher"),
    ("rl_gold_vs_teacher", "rl_gold", "teacher", "RL gold - teacher"),
]


def _comparisons(items_dir: Path) -> dict[str, dict[str, Any]]:
    """Paired differences (points, 95% CI, verdict) between the demo's models on the same test problems."""
    from twofold.core.evaluation import paired_difference

    def rows(name: str) -> list[dict[str, Any]] | None:
        path = items_dir / f"{name}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else None

    out = {}
    for key, a, b, _ in COMPARISONS:
        ra, rb = rows(a), rows(b)
        if ra is not None and rb is not None:
            out[key] = paired_difference(ra, rb)
    return out


def _acc(r: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if r is None else {"accuracy": r["accuracy"], "ci95": list(r["ci95"])}


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{x * 100:5.1f}%"


def demo_table(s: dict[str, Any]) -> str:
    """The demo's summary as a plain-text table."""
    seed = s.get("data_seed", 0)
    split = f"{s['test_size']} held-out problems" + (f" (dev split, data seed {seed})" if seed else "")
    rows = [f"twofold demo: arithmetic, {split}, greedy accuracy (95% CI)", ""]
    for key, name in [
        ("teacher", "teacher (0.56M)"),
        ("sft", "SFT student (0.15M)"),
        ("rl", "RL student, reward model"),
        ("rl_gold", "RL student, gold reward (control)"),
    ]:
        r = s.get(key)
        if r is None:
            continue
        lo, hi = r["ci95"]
        rows.append(f"  {name:<36}{_pct(r['accuracy'])}  [{lo * 100:.1f}, {hi * 100:.1f}]")
    pl, rm = s["pseudo_labels"], s["reward_model"]
    rows += [
        "",
        f"  pseudo-labels: {pl['count']} on {pl['questions_kept']}/{pl['questions_total']} questions; "
        f"label accuracy vs gold {_pct(pl['accuracy_vs_gold'])}, majority answer correct "
        f"{_pct(pl['majority_accuracy_vs_gold'])}",
        f"  reward model (held-out questions): accuracy {_pct(rm['accuracy'])}, "
        f"pairwise {_pct(rm['pairwise_accuracy'])}",
        "",
    ]
    labels = {key: label for key, _, _, label in COMPARISONS}
    if s.get("comparisons"):
        rows.append("  paired differences on the same problems (points, 95% CI):")
        for key, c in s["comparisons"].items():
            lo, hi = c["ci95"]
            rows.append(
                f"    {labels.get(key, key):<20}{c['points']:+6.1f}  [{lo:+.1f}, {hi:+.1f}]  {c['verdict']}"
            )
        rows.append("")
    rows += [
        "  seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in s["stages"].items()),
        f"  total: {s['seconds']:.0f}s",
    ]
    t, m = s.get("teacher_training"), s.get("machine")
    if t:
        reached = (
            f" to {_pct(t['validation_accuracy']).strip()} validation accuracy"
            if t["validation_accuracy"] is not None
            else ""
        )
        rows.append(f"  teacher: {t['steps']} training steps{reached}")
    if m:
        rows.append(
            f"  machine: {m['cpu']}, {m['cores']} cores, {m['isa']}, torch {m['torch']} ({m['threads']} threads)"
        )
    return "\n".join(rows)
