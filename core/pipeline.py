"""The stage graph: runs the stages of a job in order, resumable, reporting through callbacks.

Stages and what each leaves in the job's work directory (``Workspace``):

=================  =====  ======================================================================
stage              queue  outputs
=================  =====  ======================================================================
teacher_sampling   io     teacher_samples.jsonl (appended as responses arrive)
sft                gpu    sft/ (HF checkpoint), sft_state/ (resume state)
labeling           gpu    student_samples.jsonl, labels.jsonl, label_stats.json
reward_model       gpu    reward_model/ (HF checkpoint + twofold_reward.json: scalar or implicit)
rl                 gpu    rl/ (HF checkpoint), rl_state/ (resume state)
evaluation         gpu    evaluation.json, eval_items/<model>.jsonl
=================  =====  ======================================================================

A finished stage writes ``stages/<name>.json`` (its summary); ``run_pipeline`` skips stages that have one.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from twofold.core.configs import DataConfig, JobSpec
from twofold.core.records import Callbacks, EvalResult, Label, StudentSample, TeacherSample
from twofold.core.tasks import Item, get_task

STAGES: tuple[str, ...] = ("teacher_sampling", "sft", "labeling", "reward_model", "rl", "evaluation")
STAGE_QUEUE: dict[str, str] = {s: ("io" if s == "teacher_sampling" else "gpu") for s in STAGES}


class PipelineCallbacks(Callbacks, Protocol):
    """Callbacks plus the persistence hooks the service implements (each called before the data is used)."""

    def teacher_samples(self, samples: list[TeacherSample]) -> None:
        """New teacher responses, as they arrive."""

    def student_samples(self, samples: list[StudentSample]) -> None:
        """New student responses drawn for labelling."""

    def labels(self, labels: list[Label], stats: dict[str, Any]) -> None:
        """All pseudo-labels of the job and their summary statistics."""

    def checkpoint(self, stage: str, kind: str, step: int, path: Path) -> None:
        """A complete HF checkpoint directory was written (``kind``: policy | reward_model)."""

    def evaluation(self, result: EvalResult) -> None:
        """A model was scored on a benchmark."""


@dataclass
class TaskData:
    """The questions of a job: ``train`` for distillation, ``test`` held out for evaluation."""

    task: str
    train: list[Item]
    test: list[Item]


def load_data(cfg: DataConfig) -> TaskData:
    """Load train/test items for ``cfg``; ``train_size``/``test_size`` (0 = all) cut a deterministic order."""
    task = get_task(cfg.task)
    if cfg.task == "arithmetic":
        train = task.load("train", size=cfg.train_size or 2000, seed=cfg.seed)
        test = task.load("test", size=cfg.test_size or 1000, seed=cfg.seed)
    elif cfg.task == "gsm8k":
        train, test = task.load(cfg.path, "train"), task.load(cfg.path, "test")
    else:
        train, test = task.load(cfg.path, "train", seed=cfg.seed), task.load(cfg.path, "test", seed=cfg.seed)
    if cfg.train_size:
        train = train[: cfg.train_size]
    if cfg.test_size:
        test = test[: cfg.test_size]
    if not train:
        raise ValueError(f"data: task {cfg.task!r} gave no training questions")
    return TaskData(cfg.task, train, test)


class Workspace:
    """The files of one job under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """A path inside the workspace."""
        return self.root / name

    def done(self, stage: str) -> dict[str, Any] | None:
        """The summary of ``stage`` if it has finished, else None."""
        p = self.root / "stages" / f"{stage}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def mark_done(self, stage: str, summary: dict[str, Any]) -> None:
        """Record ``stage`` as finished (atomic write)."""
        write_json(self.root / "stages" / f"{stage}.json", summary)

    def append_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to a JSONL file and flush them to disk."""
        with (self.root / name).open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """Rows of a JSONL file (a torn last line from a crash is ignored)."""
        p = self.root / name
        if not p.exists():
            return []
        rows = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def teacher_samples(self) -> list[TeacherSample]:
        """Teacher samples recorded so far (deduplicated by key)."""
        seen: dict[tuple[str, float, int], TeacherSample] = {}
        for row in self.read_jsonl("teacher_samples.jsonl"):
            s = TeacherSample(**row)
            seen.setdefault(s.key, s)
        return list(seen.values())


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (tmp file then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def run_stage(
    stage: str,
    *,
    spec: JobSpec,
    data: TaskData,
    workdir: Path,
    callbacks: PipelineCallbacks,
    teacher_samples: Sequence[TeacherSample] | None = None,
) -> dict[str, Any]:
    """Run one stage; returns its summary (also written to ``stages/<stage>.json``).

    ``teacher_samples``: samples already persisted elsewhere (the service's DB); their keys are not requested
    again. Without it, ``teacher_samples.jsonl`` in ``workdir`` is the record.
    Raises ``core.records.Cancelled`` when ``callbacks.should_stop()`` turns true.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    import torch

    ws = Workspace(workdir)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    ctx = _Context(spec, data, ws, callbacks, teacher_samples)
    start = time.monotonic()
    callbacks.event(stage, "info", "stage_started", f"{stage} started")
    summary = _STAGE_FUNCS[stage](ctx)
    summary["seconds"] = round(time.monotonic() - start, 2)
    ws.mark_done(stage, summary)
    callbacks.progress(stage, 1, 1)
    callbacks.event(
        stage, "info", "stage_finished", f"{stage} finished in {summary['seconds']:.1f}s", _jsonable(summary)
    )
    return summary


def run_pipeline(
    spec: JobSpec,
    *,
    data: TaskData,
    workdir: Path,
    callbacks: PipelineCallbacks,
    stages: Sequence[str] = STAGES,
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` in order, skipping those already finished in ``workdir``; returns summaries by stage."""
    ws = Workspace(workdir)
    out: dict[str, dict[str, Any]] = {}
    for stage in stages:
        done = ws.done(stage)
        if done is not None:
            callbacks.event(stage, "info", "stage_skipped", f"{stage} already finished; reusing its outputs")
            out[stage] = done
            continue
        out[stage] = run_stage(stage, spec=spec, data=data, workdir=workdir, callbacks=callbacks)
    return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


@dataclass
class _Context:
    spec: JobSpec
    data: TaskData
    ws: Workspace
    cb: PipelineCallbacks
    given_teacher_samples: Sequence[TeacherSample] | None

    @property
    def task(self) -> ModuleType:
        return get_task(self.data.task)

    @property
    def device(self) -> str:
        from twofold.core.models import pick_device

        return str(pick_device(self.spec.device))

    def teacher_samples(self) -> list[TeacherSample]:
        if self.given_teacher_samples is not None:
            return list(self.given_teacher_samples)
        return self.ws.teacher_samples()

    def load_policy(self, name: str) -> tuple[Any, Any]:
        from twofold.core.models import load_causal_lm

        path = self.ws.path(name)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{name}: no checkpoint in {path}; run the earlier stages first")
        return load_causal_lm(path, device=self.device)


def _teacher_sampling(ctx: _Context) -> dict[str, Any]:
    from twofold.core.teacher import TeacherClient

    stage = "teacher_sampling"
    cfg = ctx.spec.teacher
    existing = ctx.teacher_samples()
    items = ctx.data.train
    total = len(items) * cfg.samples_per_question
    done = len({s.key for s in existing})
    ctx.cb.progress(stage, done, total)
    from twofold.core.records import Cancelled

    new_samples: list[TeacherSample] = []

    def sink(batch: list[TeacherSample]) -> None:
        nonlocal done
        new_samples.extend(batch)
        ctx.cb.teacher_samples(batch)  # persist first: a resumed job never pays for these again
        ctx.ws.append_jsonl("teacher_samples.jsonl", (s.to_dict() for s in batch))
        done += len(batch)
        ctx.cb.progress(stage, done, total)
        if ctx.cb.should_stop():
            raise Cancelled(stage)

    def on_event(level: str, type_: str, message: str, data: dict[str, Any]) -> None:
        ctx.cb.event(stage, level, type_, message, data)

    async def go() -> Any:
        client = TeacherClient(cfg, on_event=on_event)
        try:
            await client.check()
            return await client.sample(
                items,
                build_prompt=ctx.task.build_prompt,
                extract_answer=ctx.task.extract_answer,
                skip=frozenset(s.key for s in existing),
                sink=sink,
            )
        finally:
            await client.aclose()

    usage = asyncio.run(go())
    samples = {s.key: s for s in existing}
    samples.update((s.key, s) for s in new_samples)
    parsed = sum(s.answer is not None for s in samples.values())
    return {
        "samples": len(samples),
        "reused": len(existing),
        "parseable": parsed,
        "usage": dataclasses.asdict(usage) if dataclasses.is_dataclass(usage) else dict(usage),
    }


def _sft(ctx: _Context) -> dict[str, Any]:
    from twofold.core.models import model_from_config, save_hf
    from twofold.core.sft import AgreementCheck, holdout_majority, sft_examples, train_causal_lm
    from twofold.core.training import clear_state

    spec = ctx.spec
    samples = ctx.teacher_samples()
    majority: dict[str, str] = {}
    if spec.sft.holdout_questions:
        majority = holdout_majority(
            samples, spec.sft.holdout_questions, min_vote_share=spec.labels.min_vote_share, seed=spec.seed
        )
    held_out = [it for it in ctx.data.train if it.id in majority]
    train_items = [it for it in ctx.data.train if it.id not in majority]
    prompts, completions = sft_examples(
        train_items,
        samples,
        ctx.task.build_prompt,
        spec.sft,
        min_vote_share=spec.labels.min_vote_share,
    )
    if not prompts:
        raise ValueError(
            "sft: no teacher response agrees with its question's majority answer; check the "
            "teacher endpoint, teacher.max_tokens and labels.min_vote_share"
        )
    model, tok = model_from_config(
        spec.student.preset, spec.student.path, seed=spec.seed, dtype=spec.student.dtype, device=ctx.device
    )
    state_dir = ctx.ws.path("sft_state")
    check = (
        AgreementCheck(
            model,
            tok,
            held_out,
            majority,
            ctx.task,
            max_new_tokens=spec.labels.max_new_tokens,
            batch_size=spec.evaluation.batch_size,
            patience=spec.sft.patience,
            callbacks=ctx.cb,
        )
        if held_out
        else None
    )
    summary = train_causal_lm(
        model,
        tok,
        prompts,
        completions,
        cfg=spec.sft,
        callbacks=ctx.cb,
        stage="sft",
        state_dir=state_dir,
        seed=spec.seed,
        stop_when=check,
        stop_check_every=spec.sft.check_every,
    )
    if check is not None:
        check(summary["steps"])  # the last step competes too
        summary.update(check.keep_best())
        ctx.cb.event(
            "sft",
            "info",
            "best_checkpoint",
            f"sft keeps step {summary['best_step']} of {summary['steps']}: its greedy answers agree with the "
            f"teacher's majority on {summary['holdout_agreement']:.1%} of {len(held_out)} held-out questions",
            {"best_step": summary["best_step"], "holdout_agreement": summary["holdout_agreement"]},
        )
    out = save_hf(model, tok, ctx.ws.path("sft"))
    ctx.cb.checkpoint("sft", "policy", summary.get("best_step") or summary["steps"], out)
    clear_state(state_dir)
    return summary


def _labeling(ctx: _Context) -> dict[str, Any]:
    import torch

    from twofold.core.labeling import kept_questions, label_responses, label_stats, votes_by_question
    from twofold.core.models import generate

    spec, stage = ctx.spec, "labeling"
    teacher = ctx.teacher_samples()
    votes = votes_by_question(teacher)
    kept = kept_questions(votes, spec.labels.min_vote_share)
    items = [it for it in ctx.data.train if it.id in kept]
    student: list[StudentSample] = []
    k = spec.labels.student_samples
    if k:
        model, tok = ctx.load_policy("sft")
        gen = torch.Generator(device=ctx.device).manual_seed(spec.seed)
        rows = [(it, j) for it in items for j in range(k)]
        batch = 256
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            out = generate(
                model,
                tok,
                [ctx.task.build_prompt(it) for it, _ in chunk],
                max_new_tokens=spec.labels.max_new_tokens,
                temperature=spec.labels.student_temperature,
                generator=gen,
            )
            student.extend(
                StudentSample(it.id, j, text, ctx.task.extract_answer(text))
                for (it, j), text in zip(chunk, out.texts, strict=True)
            )
            ctx.cb.progress(stage, min(i + batch, len(rows)), len(rows))
            if ctx.cb.should_stop():
                from twofold.core.records import Cancelled

                raise Cancelled(stage)
    ctx.cb.student_samples(student)
    ctx.ws.path("student_samples.jsonl").unlink(missing_ok=True)
    ctx.ws.append_jsonl("student_samples.jsonl", (s.to_dict() for s in student))
    labels = label_responses(teacher, student, min_vote_share=spec.labels.min_vote_share)
    stats = label_stats(
        labels,
        votes,
        min_vote_share=spec.labels.min_vote_share,
        items=ctx.data.train,
        is_correct=ctx.task.is_correct if ctx.spec.data.gold_available else None,
    )
    ctx.cb.labels(labels, stats)
    ctx.ws.path("labels.jsonl").unlink(missing_ok=True)
    ctx.ws.append_jsonl("labels.jsonl", (lab.to_dict() for lab in labels))
    write_json(ctx.ws.path("label_stats.json"), stats)
    if stats["questions_dropped"]:
        ctx.cb.event(
            stage,
            "info",
            "questions_dropped",
            f"{stats['questions_dropped']} of {stats['questions_total']} questions dropped "
            "(no parseable teacher answer or vote share below labels.min_vote_share)",
            {"dropped": stats["questions_dropped"]},
        )
    return {k: v for k, v in stats.items() if k != "agreement_histogram"}


def _labels(ctx: _Context) -> list[Label]:
    return [Label(**row) for row in ctx.ws.read_jsonl("labels.jsonl")]


def _reward_model(ctx: _Context) -> dict[str, Any]:
    from twofold.core.models import build_reward_model, model_from_config
    from twofold.core.reward_model import save_reward_model, train_reward_model
    from twofold.core.training import clear_state

    spec = ctx.spec
    cfg = spec.reward_model
    labels = _labels(ctx)
    ref = None
    if cfg.kind == "implicit":
        rm, tok = ctx.load_policy("sft")  # trained in place; a frozen copy of the SFT model is its reference
        ref = copy.deepcopy(rm)
    else:
        if cfg.init == "sft":
            base, tok = ctx.load_policy("sft")
        else:
            base, tok = model_from_config(
                spec.student.preset,
                spec.student.path,
                seed=spec.seed + 1,
                dtype=spec.student.dtype,
                device=ctx.device,
            )
        rm = build_reward_model(base, tok).to(ctx.device)
        del base
    state_dir = ctx.ws.path("reward_model_state")
    summary = train_reward_model(
        rm,
        tok,
        labels,
        ctx.data.train,
        ctx.task.build_prompt,
        cfg=cfg,
        callbacks=ctx.cb,
        state_dir=state_dir,
        seed=spec.seed,
        ref=ref,
    )
    out = save_reward_model(rm, tok, ctx.ws.path("reward_model"), cfg)
    ctx.cb.checkpoint("reward_model", "reward_model", summary["steps"], out)
    clear_state(state_dir)
    summary["kind"] = cfg.kind
    return summary


def _reward_fn(ctx: _Context, reward: str, ref: Any) -> Callable[[list[Item], list[str]], list[float]]:
    """The RL reward for ``reward`` (gold | pseudo_label | reward_model); ``ref`` is the frozen SFT model, which an
    implicit reward model scores against."""
    task = ctx.task
    if reward == "gold":
        return lambda items, texts: [
            float(task.is_correct(task.extract_answer(t), it.answer))
            for it, t in zip(items, texts, strict=True)
        ]
    if reward == "pseudo_label":
        from twofold.core.labeling import kept_questions, votes_by_question

        kept = kept_questions(votes_by_question(ctx.teacher_samples()), ctx.spec.labels.min_vote_share)
        return lambda items, texts: [
            float(task.extract_answer(t) == kept[it.id].majority) for it, t in zip(items, texts, strict=True)
        ]
    from twofold.core.models import load_tokenizer
    from twofold.core.reward_model import load_reward_scorer, score_responses

    path = ctx.ws.path("reward_model")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"rl: reward model missing at {path}; run the reward_model stage first")
    scorer = load_reward_scorer(path, ref=ref, device=ctx.device)
    tok = load_tokenizer(path)
    max_len = scorer.max_length or ctx.spec.reward_model.max_length  # score as the model was trained
    return lambda items, texts: score_responses(
        scorer, tok, [task.build_prompt(it) for it in items], texts, max_length=max_len
    )


def run_rl(ctx: _Context, *, out_name: str = "rl") -> dict[str, Any]:
    """RL of the SFT policy against ``spec.rl.reward``; writes the checkpoint to ``out_name/``."""
    from twofold.core.models import save_hf
    from twofold.core.rl.grpo import train_grpo
    from twofold.core.rl.ppo import train_ppo
    from twofold.core.training import clear_state

    spec = ctx.spec
    policy, tok = ctx.load_policy("sft")
    ref, _ = ctx.load_policy("sft")
    ref.eval().requires_grad_(False)
    items = ctx.data.train
    if spec.rl.reward == "pseudo_label":
        from twofold.core.labeling import kept_questions, votes_by_question

        kept = kept_questions(votes_by_question(ctx.teacher_samples()), spec.labels.min_vote_share)
        items = [it for it in items if it.id in kept]
    reward_fn = _reward_fn(ctx, spec.rl.reward, ref=ref)
    trainer = train_ppo if spec.rl.algo == "ppo" else train_grpo
    state_dir = ctx.ws.path(f"{out_name}_state")
    summary = trainer(
        policy,
        tok,
        ref_policy=ref,
        items=items,
        build_prompt=ctx.task.build_prompt,
        reward_fn=reward_fn,
        cfg=spec.rl,
        callbacks=ctx.cb,
        stage="rl",
        state_dir=state_dir,
        seed=spec.seed,
    )
    out = save_hf(policy, tok, ctx.ws.path(out_name))
    ctx.cb.checkpoint("rl", "policy", spec.rl.steps, out)
    clear_state(state_dir)
    summary["reward_source"] = spec.rl.reward
    return summary


def _rl(ctx: _Context) -> dict[str, Any]:
    return run_rl(ctx)


def evaluate_checkpoint(ctx: _Context, name: str, *, label: str | None = None) -> EvalResult:
    """Greedy accuracy of the workspace checkpoint ``name`` on the test split; reported and saved."""
    from twofold.core.evaluation import evaluate_model

    model, tok = ctx.load_policy(name)
    res = evaluate_model(
        model,
        tok,
        ctx.data.test,
        ctx.task,
        model_name=label or name,
        benchmark=ctx.data.task,
        max_new_tokens=ctx.spec.evaluation.max_new_tokens,
        batch_size=ctx.spec.evaluation.batch_size,
    )
    _report_eval(ctx, res)
    return res


def evaluate_teacher(ctx: _Context) -> EvalResult:
    """Greedy accuracy of the teacher through its endpoint on the test split."""
    from twofold.core.evaluation import evaluate_endpoint
    from twofold.core.teacher import TeacherClient

    cfg = ctx.spec.teacher
    # Responses are kept as they arrive, so a rerun of this stage (a worker died) asks only for the missing ones.
    cache = "teacher_greedy.jsonl"
    wave = cfg.concurrency * (cfg.prompts_per_request if cfg.api == "completions" else 1)

    def greedy(prompts: list[str]) -> list[str]:
        done = {row["prompt"]: row["text"] for row in ctx.ws.read_jsonl(cache)}
        missing = [p for p in dict.fromkeys(prompts) if p not in done]

        async def go() -> None:
            client = TeacherClient(
                cfg, on_event=lambda lv, ty, msg, d: ctx.cb.event("evaluation", lv, ty, msg, d)
            )
            try:
                for i in range(0, len(missing), wave):
                    chunk = missing[i : i + wave]
                    texts = await client.greedy(chunk, max_tokens=ctx.spec.evaluation.max_new_tokens)
                    ctx.ws.append_jsonl(
                        cache, ({"prompt": p, "text": t} for p, t in zip(chunk, texts, strict=True))
                    )
                    done.update(zip(chunk, texts, strict=True))
            finally:
                await client.aclose()

        asyncio.run(go())
        return [done[p] for p in prompts]

    res = evaluate_endpoint(greedy, ctx.data.test, ctx.task, model_name="teacher", benchmark=ctx.data.task)
    _report_eval(ctx, res)
    return res


def _report_eval(ctx: _Context, res: EvalResult) -> None:
    ctx.cb.evaluation(res)
    ctx.ws.path("eval_items").mkdir(exist_ok=True)
    target = f"eval_items/{res.model}.jsonl"
    ctx.ws.path(target).unlink(missing_ok=True)
    ctx.ws.append_jsonl(target, res.items)
    results = {}
    p = ctx.ws.path("evaluation.json")
    if p.exists():
        results = json.loads(p.read_text())
    results[res.model] = res.summary()
    write_json(p, results)


def _evaluation(ctx: _Context) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if ctx.spec.evaluation.evaluate_teacher:
        results["teacher"] = evaluate_teacher(ctx).summary()
        ctx.cb.progress("evaluation", 1, 3)
    results["sft"] = evaluate_checkpoint(ctx, "sft").summary()
    ctx.cb.progress("evaluation", 2, 3)
    results["rl"] = evaluate_checkpoint(ctx, "rl").summary()
    return results


_STAGE_FUNCS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "teacher_sampling": _teacher_sampling,
    "sft": _sft,
    "labeling": _labeling,
    "reward_model": _reward_model,
    "rl": _rl,
    "evaluation": _evaluation,
}


def context(
    spec: JobSpec,
    data: TaskData,
    workdir: Path,
    callbacks: PipelineCallbacks,
    teacher_samples: Sequence[TeacherSample] | None = None,
) -> _Context:
    """A stage context, for callers (the demo) that run extra stage variants such as a gold-reward control."""
    return _Context(spec, data, Workspace(workdir), callbacks, teacher_samples)
