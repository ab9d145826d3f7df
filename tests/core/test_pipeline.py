"""A mini end-to-end job (the ``smoke`` preset) against the real built-in teacher server over HTTP:
every stage's outputs, skipping finished stages, and resuming a stage or half-done teacher sampling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from twofold.core import pipeline
from twofold.core.configs import JobSpec
from twofold.core.models import load_causal_lm
from twofold.core.presets import preset_spec
from twofold.core.records import EvalResult, Label, NullCallbacks, StudentSample, TeacherSample
from twofold.core.stages import STAGE_NAMES, Variant
from twofold.core.stages.context import TaskData, load_data
from twofold.core.workspace import Workspace

pytestmark = pytest.mark.slow

TRAIN = TEST = 64  # the smoke preset's split sizes
PER_QUESTION = 4  # smoke: 2 temperatures x n=2


class Recorder(NullCallbacks):
    """PipelineCallbacks that remember what each hook was handed."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.progress_stages: set[str] = set()
        self.metric_stages: set[str] = set()
        self.teacher: list[TeacherSample] = []
        self.student: list[StudentSample] = []
        self.label_calls: list[tuple[list[Label], dict[str, Any]]] = []
        self.checkpoints: list[tuple[str, str, Path]] = []
        self.evaluations: list[EvalResult] = []

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Remember (stage, type)."""
        self.events.append((stage, type))

    def progress(self, stage: str, done: int, total: int) -> None:
        """Remember which stage runs reported progress."""
        self.progress_stages.add(stage)

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Remember which stage runs reported metrics."""
        self.metric_stages.add(stage)

    def stages_with(self, type_: str) -> list[str]:
        """Stages that emitted an event of ``type_``, in order."""
        return [stage for stage, t in self.events if t == type_]

    def teacher_samples(self, samples: list[TeacherSample]) -> None:
        """Remember teacher samples."""
        self.teacher.extend(samples)

    def student_samples(self, samples: list[StudentSample]) -> None:
        """Remember student samples."""
        self.student.extend(samples)

    def labels(self, labels: list[Label], stats: dict[str, Any]) -> None:
        """Remember the labels."""
        self.label_calls.append((labels, stats))

    def checkpoint(self, stage: str, kind: str, step: int, path: Path) -> None:
        """Remember the checkpoint."""
        self.checkpoints.append((stage, kind, path))

    def evaluation(self, result: EvalResult) -> None:
        """Remember the score."""
        self.evaluations.append(result)


def health(url: str) -> dict[str, Any]:
    """The teacher server's /health counters."""
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=10).json()


@pytest.fixture(scope="module")
def spec(arith_teacher_url: str) -> JobSpec:
    raw = preset_spec("smoke", teacher_base_url=arith_teacher_url, teacher_model="arith-teacher")
    return JobSpec.from_dict({**raw, "threads": 1})


@pytest.fixture(scope="module")
def data(spec: JobSpec) -> TaskData:
    return load_data(spec.data)


@pytest.fixture(scope="module")
def smoke_run(spec: JobSpec, data: TaskData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One full run of the smoke job; its workdir is shared by the tests below."""
    workdir = tmp_path_factory.mktemp("smoke-job")
    cb = Recorder()
    summaries = pipeline.run_pipeline(spec, data=data, workdir=workdir, callbacks=cb)
    return {"workdir": workdir, "cb": cb, "summaries": summaries}


def test_every_stage_leaves_its_outputs(smoke_run: dict[str, Any], spec: JobSpec, data: TaskData) -> None:
    ws, cb, summaries = smoke_run["workdir"], smoke_run["cb"], smoke_run["summaries"]
    assert list(summaries) == list(STAGE_NAMES)
    assert cb.stages_with("stage_finished") == list(STAGE_NAMES)
    assert cb.progress_stages == set(STAGE_NAMES) and cb.metric_stages <= set(STAGE_NAMES)
    for stage in STAGE_NAMES:
        assert json.loads((ws / "stages" / f"{stage}.json").read_text()) == json.loads(
            json.dumps(summaries[stage], default=str)
        )

    rows = [json.loads(line) for line in (ws / "teacher_samples.jsonl").read_text().splitlines()]
    keys = {(r["question_id"], r["temperature"], r["index"]) for r in rows}
    assert len(rows) == len(keys) == TRAIN * PER_QUESTION
    assert {r["question_id"] for r in rows} == {it.id for it in data.train}
    assert len(cb.teacher) == len(rows)  # every response went through the persistence hook
    assert summaries["teacher_sampling"]["samples"] == TRAIN * PER_QUESTION
    assert summaries["teacher_sampling"]["usage"]["samples"] == TRAIN * PER_QUESTION

    sft_model, tok = load_causal_lm(ws / "sft")
    assert tok.padding_side == "left"
    labels = [json.loads(line) for line in (ws / "labels.jsonl").read_text().splitlines()]
    stats = json.loads((ws / "label_stats.json").read_text())
    assert len(labels) == stats["labels"] == len(cb.label_calls[0][0]) > 0
    assert stats["student_labels"] == stats["questions_kept"] * spec.labels.student_samples
    assert sum(h["count"] for h in stats["agreement_histogram"]) == stats["questions_kept"]
    assert stats["accuracy_vs_gold"] is not None  # arithmetic has gold answers to report against
    student_rows = (ws / "student_samples.jsonl").read_text().splitlines()
    assert len(student_rows) == len(cb.student) == stats["student_labels"]

    rm = AutoModelForSequenceClassification.from_pretrained(str(ws / "reward_model"), local_files_only=True)
    assert rm.config.num_labels == 1
    assert summaries["reward_model"]["accuracy"] is not None

    rl_model, _ = load_causal_lm(ws / "rl")
    changed = [
        name
        for (name, a), b in zip(sft_model.state_dict().items(), rl_model.state_dict().values(), strict=True)
        if not torch.equal(a, b)
    ]
    assert changed  # RL moved the policy away from the SFT checkpoint
    assert summaries["rl"]["reward_source"] == "reward_model" and summaries["rl"]["steps"] == 3

    evaluation = json.loads((ws / "evaluation.json").read_text())
    assert set(evaluation) == {"teacher", "sft", "rl"}
    for name, res in evaluation.items():
        assert res["n"] == TEST and 0.0 <= res["accuracy"] <= 1.0
        assert res["ci95"][0] <= res["accuracy"] <= res["ci95"][1]
        items = (ws / "eval_items" / f"{name}.jsonl").read_text().splitlines()
        assert len(items) == TEST
        assert sum(json.loads(r)["correct"] for r in items) == round(res["accuracy"] * TEST)
    assert [r.model for r in cb.evaluations] == ["teacher", "sft", "rl"]
    assert [(s, k) for s, k, _ in cb.checkpoints] == [
        ("sft", "policy"),
        ("reward_model", "reward_model"),
        ("rl", "policy"),
    ]
    # resume state is removed once a stage has saved its final checkpoint
    assert not any((ws / f"{s}_state").exists() for s in ("sft", "reward_model", "rl"))


def test_a_second_run_skips_every_stage(
    smoke_run: dict[str, Any], spec: JobSpec, data: TaskData, arith_teacher_url: str
) -> None:
    ws = smoke_run["workdir"]
    before = health(arith_teacher_url)["requests"]
    cb = Recorder()
    again = pipeline.run_pipeline(spec, data=data, workdir=ws, callbacks=cb)
    assert cb.stages_with("stage_skipped") == list(STAGE_NAMES)
    assert cb.stages_with("stage_started") == []
    assert again == {s: json.loads((ws / "stages" / f"{s}.json").read_text()) for s in STAGE_NAMES}
    assert health(arith_teacher_url)["requests"] == before  # the teacher is not asked again
    assert not cb.teacher and not cb.checkpoints


def test_deleting_the_rl_outputs_reruns_only_rl(
    smoke_run: dict[str, Any], spec: JobSpec, data: TaskData
) -> None:
    ws = smoke_run["workdir"]
    first_rl = load_causal_lm(ws / "rl")[0].state_dict()
    evaluation = (ws / "evaluation.json").read_text()
    (ws / "stages" / "rl.json").unlink()
    shutil.rmtree(ws / "rl")
    cb = Recorder()
    pipeline.run_pipeline(spec, data=data, workdir=ws, callbacks=cb)
    assert cb.stages_with("stage_started") == ["rl"]
    assert cb.stages_with("stage_skipped") == [s for s in STAGE_NAMES if s != "rl"]
    assert (ws / "stages" / "rl.json").exists()
    rerun_rl = load_causal_lm(ws / "rl")[0].state_dict()
    # same seed, same inputs: the rerun reproduces the first RL checkpoint
    assert all(torch.allclose(first_rl[k], rerun_rl[k], atol=1e-6) for k in first_rl)
    assert (ws / "evaluation.json").read_text() == evaluation


GOLD = Variant("rl_gold", "rl", {"rl": {"reward": "gold"}})
SCORE_GOLD = Variant(
    "evaluation_gold", "evaluation", {"evaluation": {"evaluate_teacher": False, "models": ["rl_gold"]}}
)


def test_a_variant_runs_under_its_own_name_as_the_stage_would_with_its_overrides(
    smoke_run: dict[str, Any], spec: JobSpec, data: TaskData, tmp_path: Path
) -> None:
    """The demo's gold control: RL against gold answers as ``rl_gold``, then a score of that checkpoint."""
    ws = tmp_path / "job"
    shutil.copytree(smoke_run["workdir"], ws)
    rl_before = (ws / "rl" / "model.safetensors").read_bytes()
    evaluation_before = json.loads((ws / "evaluation.json").read_text())
    cb = Recorder()
    summaries = pipeline.run_pipeline(spec, data=data, workdir=ws, callbacks=cb, stages=[GOLD, SCORE_GOLD])

    assert cb.stages_with("stage_started") == ["rl_gold", "evaluation_gold"]
    assert cb.metric_stages == {"rl_gold"} and cb.progress_stages == {"rl_gold", "evaluation_gold"}
    assert {stage for stage, _ in cb.events} == {"rl_gold", "evaluation_gold"}
    assert [(s, k) for s, k, _ in cb.checkpoints] == [("rl_gold", "policy")]
    assert summaries["rl_gold"]["reward_source"] == "gold" and summaries["rl_gold"]["steps"] == 3
    assert json.loads((ws / "stages" / "rl_gold.json").read_text())["reward_source"] == "gold"
    assert not (ws / "rl_gold_state").exists()
    assert (ws / "rl" / "model.safetensors").read_bytes() == rl_before  # the method's checkpoint is untouched

    assert [r.model for r in cb.evaluations] == ["rl_gold"]
    assert set(summaries["evaluation_gold"]) == {"rl_gold", "seconds"}
    evaluation = json.loads((ws / "evaluation.json").read_text())
    scored = json.loads(json.dumps(summaries["evaluation_gold"]["rl_gold"]))
    assert evaluation == {**evaluation_before, "rl_gold": scored} and scored["n"] == TEST
    assert len((ws / "eval_items" / "rl_gold.jsonl").read_text().splitlines()) == TEST

    # the variant is the rl stage with its overrides, seeded the same: the plain stage on a gold spec matches it
    plain = tmp_path / "plain"
    shutil.copytree(smoke_run["workdir"], plain)
    (plain / "stages" / "rl.json").unlink()
    gold_spec = GOLD.apply(spec)
    pipeline.run_pipeline(gold_spec, data=data, workdir=plain, callbacks=Recorder(), stages=["rl"])
    a, b = load_causal_lm(ws / "rl_gold")[0].state_dict(), load_causal_lm(plain / "rl")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_scoring_a_checkpoint_that_no_run_wrote_fails_naming_the_field(
    smoke_run: dict[str, Any], spec: JobSpec, data: TaskData, tmp_path: Path, arith_teacher_url: str
) -> None:
    shutil.copytree(smoke_run["workdir"], tmp_path / "job")
    before = health(arith_teacher_url)["requests"]
    with pytest.raises(FileNotFoundError, match="evaluation.models: no checkpoint 'rl_gold'"):
        pipeline.run_stage(SCORE_GOLD, spec=spec, data=data, workdir=tmp_path / "job", callbacks=Recorder())
    assert health(arith_teacher_url)["requests"] == before  # it failed before asking the teacher anything


def test_teacher_sampling_resumes_by_requesting_only_missing_samples(
    smoke_run: dict[str, Any],
    spec: JobSpec,
    data: TaskData,
    arith_teacher_url: str,
    tmp_path: Path,
) -> None:
    lines = (smoke_run["workdir"] / "teacher_samples.jsonl").read_text().splitlines()
    kept = lines[::2]  # every other sample: some questions lose one index of a temperature, some lose more
    (tmp_path / "teacher_samples.jsonl").write_text("\n".join(kept) + "\n")
    before = health(arith_teacher_url)
    cb = Recorder()
    summary = pipeline.run_pipeline(
        spec, data=data, workdir=tmp_path, callbacks=cb, stages=["teacher_sampling"]
    )
    after = health(arith_teacher_url)
    stage = summary["teacher_sampling"]
    missing = len(lines) - len(kept)
    assert stage["reused"] == len(kept) and stage["samples"] == len(lines)
    assert stage["usage"]["samples"] == missing == len(cb.teacher)
    assert after["rows"] - before["rows"] == missing  # the server generated only the missing completions
    assert after["requests"] - before["requests"] == stage["usage"]["requests"]
    rows = [json.loads(line) for line in (tmp_path / "teacher_samples.jsonl").read_text().splitlines()]
    assert len(rows) == len({(r["question_id"], r["temperature"], r["index"]) for r in rows}) == len(lines)
    assert json.loads((tmp_path / "stages" / "teacher_sampling.json").read_text())["reused"] == len(kept)


def test_an_implicit_reward_model_scores_rl_against_the_sft_reference(
    smoke_run: dict[str, Any], spec: JobSpec, data: TaskData, tmp_path: Path
) -> None:
    """The demo's reward model kind: a copy of the SFT policy whose reward is beta * log(pi_rm / pi_sft)."""
    ws = tmp_path / "job"
    shutil.copytree(smoke_run["workdir"], ws)
    for stage in ("reward_model", "rl", "evaluation"):
        (ws / "stages" / f"{stage}.json").unlink()
    shutil.rmtree(ws / "reward_model")
    shutil.rmtree(ws / "rl")
    raw = spec.to_dict()
    raw["reward_model"] = {**raw["reward_model"], "kind": "implicit", "init": "sft", "beta": 0.5}
    implicit = JobSpec.from_dict(raw)
    cb = Recorder()
    summaries = pipeline.run_pipeline(implicit, data=data, workdir=ws, callbacks=cb)
    assert cb.stages_with("stage_started") == ["reward_model", "rl", "evaluation"]
    meta = json.loads((ws / "reward_model" / "twofold_reward.json").read_text())
    assert meta["kind"] == "implicit" and meta["beta"] == 0.5
    assert summaries["reward_model"]["kind"] == "implicit"
    assert summaries["reward_model"]["accuracy"] is not None
    # the reward model is a causal LM (no scalar head) that has moved away from the SFT policy it started from
    rm, _ = load_causal_lm(ws / "reward_model")
    sft = load_causal_lm(ws / "sft")[0].state_dict()
    assert any(not torch.equal(sft[k], v) for k, v in rm.state_dict().items())
    assert summaries["rl"]["reward_source"] == "reward_model" and summaries["rl"]["steps"] == 3
    # scored against the SFT reference, not itself: an identical pair would give exactly sigmoid(0) = 0.5
    assert summaries["rl"]["mean_reward"] != pytest.approx(0.5, abs=1e-6)
    assert json.loads((ws / "evaluation.json").read_text())["rl"]["n"] == TEST


def test_sft_with_a_holdout_keeps_the_checkpoint_that_agrees_most_with_the_teacher_majority(
    smoke_run: dict[str, Any],
    spec: JobSpec,
    data: TaskData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The label-free SFT check in the pipeline: the held-out questions leave the SFT data and go to the check with
    the teacher's majority answers, and the saved checkpoint holds the weights of the best check. The agreements
    are scripted here (a smoke-sized student agrees on nothing yet); tests/core/test_sft.py measures real ones."""
    import itertools

    from twofold.core.labeling import agreeing_teacher_samples, kept_questions, votes_by_question
    from twofold.core.sft import AgreementCheck

    shutil.copytree(smoke_run["workdir"] / "stages", tmp_path / "stages")
    shutil.copy(smoke_run["workdir"] / "teacher_samples.jsonl", tmp_path)
    for stage in STAGE_NAMES[1:]:
        (tmp_path / "stages" / f"{stage}.json").unlink()
    raw = spec.to_dict()
    raw["sft"] = {**raw["sft"], "epochs": 4, "holdout_questions": 16, "check_every": 1}
    held_spec = JobSpec.from_dict(raw)

    script = itertools.chain(
        [0.1, 0.6, 0.2, 0.3, 0.6], itertools.repeat(0.4)
    )  # best at the 2nd check; tie later
    given: list[tuple[set[str], dict[str, str]]] = []
    weights_at: dict[int, dict[str, torch.Tensor]] = {}
    check_at = AgreementCheck.__call__

    def scripted_agreement(self: AgreementCheck) -> float:
        given.append(({it.id for it in self.items}, dict(self.majority)))
        return next(script)

    def snapshot_then_check(self: AgreementCheck, step: int) -> bool:
        weights_at[step] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return check_at(self, step)

    monkeypatch.setattr(AgreementCheck, "agreement", scripted_agreement)
    monkeypatch.setattr(AgreementCheck, "__call__", snapshot_then_check)
    cb = Recorder()
    summary = pipeline.run_pipeline(held_spec, data=data, workdir=tmp_path, callbacks=cb, stages=["sft"])[
        "sft"
    ]

    last = summary["steps"]
    assert [c["step"] for c in summary["checks"]] == [*range(1, last + 1)]  # the last step is checked once
    assert last >= 6
    assert summary["best_step"] == 2 and summary["holdout_agreement"] == 0.6  # the earlier of the two 0.6s
    assert summary["holdout_questions"] == 16 and ("sft", "best_checkpoint") in cb.events
    saved = load_causal_lm(tmp_path / "sft")[0].state_dict()
    assert all(torch.equal(v, weights_at[2][k]) for k, v in saved.items())
    assert any(not torch.equal(v, weights_at[last][k]) for k, v in saved.items())
    # the check got the held-out questions with the teacher's majority answers; the SFT data lack them
    teacher = Workspace(tmp_path).teacher_samples()
    votes = kept_questions(votes_by_question(teacher), held_spec.labels.min_vote_share)
    chosen = random_holdout(held_spec, sorted(votes))
    assert len(chosen) == 16
    assert all(
        ids == chosen and majority == {q: votes[q].majority for q in chosen} for ids, majority in given
    )
    agreeing = agreeing_teacher_samples(teacher, held_spec.labels.min_vote_share)
    assert summary["examples"] == len(agreeing) - sum(1 for s in agreeing if s.question_id in chosen)
    assert summary["examples"] < len(agreeing)


def random_holdout(spec: JobSpec, kept_ids: list[str]) -> set[str]:
    """The held-out questions as the pipeline draws them (seeded by the job's seed)."""
    import random

    return set(random.Random(f"{spec.seed}-sft-holdout").sample(kept_ids, spec.sft.holdout_questions))


def test_a_holdout_as_large_as_the_kept_questions_is_an_error_naming_the_field(
    smoke_run: dict[str, Any], spec: JobSpec, data: TaskData, tmp_path: Path
) -> None:
    shutil.copy(smoke_run["workdir"] / "teacher_samples.jsonl", tmp_path)
    (tmp_path / "stages").mkdir()
    shutil.copy(smoke_run["workdir"] / "stages" / "teacher_sampling.json", tmp_path / "stages")
    raw = spec.to_dict()
    raw["sft"] = {**raw["sft"], "holdout_questions": TRAIN}
    with pytest.raises(ValueError, match="sft.holdout_questions"):
        pipeline.run_pipeline(
            JobSpec.from_dict(raw), data=data, workdir=tmp_path, callbacks=Recorder(), stages=["sft"]
        )
    assert not (tmp_path / "sft").exists()
