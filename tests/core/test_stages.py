"""The stage table and variants: what every other package derives from it, and the checks on a variant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from twofold.core import pipeline
from twofold.core.configs import ConfigError, JobSpec
from twofold.core.records import NullCallbacks
from twofold.core.stages import (
    STAGE_NAMES,
    STAGES,
    Queue,
    Variant,
    as_variant,
    get_stage,
    markdown_table,
    stage_runner,
)
from twofold.core.stages.context import TaskData
from twofold.core.tasks import Item

REPO = Path(__file__).resolve().parents[2]
SPEC = JobSpec.from_dict(
    {"teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}, "student": {"preset": "micro"}}
)


def test_the_table_and_the_packages_that_read_it_import_without_torch() -> None:
    code = (
        "import sys, twofold.core.stages, twofold.store.stages, twofold.store.jobs, twofold.store.flows, "
        "twofold.store.dispatch, twofold.api.jobs.service; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_every_stage_has_a_unique_name_a_queue_and_a_module_with_run() -> None:
    assert tuple(s.name for s in STAGES) == STAGE_NAMES and len(set(STAGE_NAMES)) == len(STAGES)
    spec_sections = set(SPEC.to_dict())
    for stage in STAGES:
        assert get_stage(stage.name) is stage and isinstance(stage.queue, Queue)
        assert stage.reads and set(stage.reads) <= spec_sections, stage.reads
        assert callable(stage_runner(stage))  # core/stages/<name>.py exposes run(ctx)
    assert get_stage("rl").outputs_of("rl_gold") == ("rl_gold/",)
    with pytest.raises(ValueError, match="unknown stage 'distil'; stages are teacher_sampling, sft"):
        get_stage("distil")


def test_the_architecture_doc_shows_the_table_as_it_is() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert markdown_table() in doc, (
        "regenerate the table in docs/architecture.md with core.stages.markdown_table()"
    )


def test_a_variant_applies_its_overrides_and_validates_them() -> None:
    gold = Variant("rl_gold", "rl", {"rl": {"reward": "gold", "steps": 7}})
    spec = gold.apply(SPEC)
    assert (spec.rl.reward, spec.rl.steps, spec.rl.lr) == ("gold", 7, SPEC.rl.lr)  # other fields kept
    assert spec.teacher == SPEC.teacher and SPEC.rl.reward == "reward_model"
    assert as_variant("rl") == Variant("rl", "rl") and as_variant(gold) is gold
    assert Variant("rl", "rl").apply(SPEC) is SPEC
    with pytest.raises(ConfigError, match="in variant 'rl_fast'") as exc:
        Variant("rl_fast", "rl", {"rl": {"stpes": 7}}).apply(SPEC)
    assert exc.value.param == "rl.stpes"


@pytest.mark.parametrize(
    ("name", "stage", "message"),
    [
        ("rl_gold", "distil", "unknown stage 'distil'"),
        ("RL Gold", "rl", "lower-case letters"),
        ("x" * 33, "rl", "at most 32 characters"),
        ("sft", "rl", "'sft' is taken"),
        ("teacher", "evaluation", "'teacher' is taken"),
    ],
)
def test_a_variant_name_must_be_new_and_fit_the_service_columns(name: str, stage: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Variant(name, stage)


def test_run_pipeline_checks_every_run_before_it_starts_one(tmp_path: Path) -> None:
    data = TaskData("arithmetic", [Item("q", "1 + 1 = ?", "2")], [])
    bad = Variant("rl_gold", "rl", {"rl": {"reward": "golden"}})
    with pytest.raises(ConfigError, match="variant 'rl_gold'"):
        pipeline.run_pipeline(
            SPEC, data=data, workdir=tmp_path, callbacks=NullCallbacks(), stages=["sft", bad]
        )
    with pytest.raises(ValueError, match="appears twice"):
        pipeline.run_pipeline(
            SPEC, data=data, workdir=tmp_path, callbacks=NullCallbacks(), stages=["sft", "sft"]
        )
    assert not (tmp_path / "stages").exists()  # nothing ran


@pytest.mark.parametrize(
    ("models", "param", "message"),
    [
        (["sft", "RL"], "evaluation.models[1]", "not a checkpoint name"),
        (["teacher"], "evaluation.models[0]", "evaluation.evaluate_teacher"),
        (["rl", "rl"], "evaluation.models", "twice"),
        ([f"m{i}" for i in range(17)], "evaluation.models", "at most 16"),
    ],
)
def test_evaluation_models_names_workspace_checkpoints(models: list[str], param: str, message: str) -> None:
    raw = {**SPEC.to_dict(), "evaluation": {"models": models}}
    with pytest.raises(ConfigError, match=message) as exc:
        JobSpec.from_dict(raw)
    assert exc.value.param == param


def test_evaluation_with_nothing_to_score_is_refused() -> None:
    raw = {**SPEC.to_dict(), "evaluation": {"models": [], "evaluate_teacher": False}}
    with pytest.raises(ConfigError, match="nothing would be scored"):
        JobSpec.from_dict(raw)
    assert SPEC.evaluation.models == ("sft", "rl")
