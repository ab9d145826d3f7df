"""JobSpec.from_dict: every invalid spec raises ConfigError naming the offending field; to_dict round-trips."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from twofold.core.configs import ConfigError, JobSpec, RLConfig, describe

BASE: dict[str, Any] = {
    "teacher": {"base_url": "http://127.0.0.1:8000/v1", "model": "tiny-teacher", "api_key": "sk-secret"},
    "student": {"preset": "tiny-student"},
}


def spec_with(**patch: Any) -> dict[str, Any]:
    """BASE with ``section={...}`` merged in (``section=None`` deletes it)."""
    raw = copy.deepcopy(BASE)
    for section, value in patch.items():
        if value is None:
            raw.pop(section, None)
        elif isinstance(value, dict):
            raw[section] = {**raw.get(section, {}), **value}
        else:
            raw[section] = value
    return raw


def param_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        JobSpec.from_dict(raw)
    assert info.value.param in str(info.value)  # the message names the field too
    return info.value.param


def test_a_minimal_spec_gets_defaults() -> None:
    spec = JobSpec.from_dict(BASE)
    assert spec.teacher.model == "tiny-teacher"
    assert spec.data.task == "arithmetic" and spec.rl.algo == "ppo"
    assert spec.teacher.samples_per_question == spec.teacher.n * len(spec.teacher.temperatures)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"colour": "blue"}, "colour"),
        ({"rl": {"lerning_rate": 1e-3}}, "rl.lerning_rate"),
        ({"teacher": {"temperature": 0.7}}, "teacher.temperature"),
    ],
)
def test_unknown_fields_are_rejected(patch: dict[str, Any], param: str) -> None:
    with pytest.raises(ConfigError, match="unknown field") as info:
        JobSpec.from_dict(spec_with(**patch))
    assert info.value.param == param


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"rl": {"steps": "ten"}}, "rl.steps"),
        ({"rl": {"steps": 1.5}}, "rl.steps"),
        ({"rl": {"whiten_rewards": "yes"}}, "rl.whiten_rewards"),
        ({"sft": {"lr": True}}, "sft.lr"),
        ({"rl": {"algo": "dpo"}}, "rl.algo"),
        ({"teacher": {"temperatures": [0.7, "hot"]}}, "teacher.temperatures[1]"),
        ({"teacher": {"model": 7}}, "teacher.model"),
        ({"sft": [1, 2]}, "sft"),
    ],
)
def test_wrong_types_name_the_field(patch: dict[str, Any], param: str) -> None:
    assert param_of(spec_with(**patch)) == param


def test_a_number_is_accepted_where_a_float_is_expected() -> None:
    spec = JobSpec.from_dict(spec_with(sft={"lr": 1}, teacher={"temperatures": 0.5}))
    assert spec.sft.lr == 1.0 and isinstance(spec.sft.lr, float)
    assert spec.teacher.temperatures == (0.5,)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"teacher": None}, "teacher"),
        ({"student": None}, "student"),
        ({"teacher": {"base_url": ""}}, "teacher.base_url"),
        ({"teacher": {"base_url": "127.0.0.1:8000"}}, "teacher.base_url"),
        ({"teacher": {"model": ""}}, "teacher.model"),
        ({"teacher": {"temperatures": [2.5]}}, "teacher.temperatures"),
        ({"student": {"preset": "huge"}}, "student.preset"),
        ({"student": {"preset": "micro", "path": "/models/x"}}, "student"),
        ({"data": {"task": "gsm8k"}}, "data.path"),
        ({"labels": {"min_vote_share": 1.5}}, "labels.min_vote_share"),
        ({"reward_model": {"batch_size": 1}}, "reward_model.batch_size"),
        ({"reward_model": {"kind": "implicit", "init": "student_base"}}, "reward_model.init"),
        ({"reward_model": {"kind": "implicit", "init": "sft", "beta": 0}}, "reward_model.beta"),
        ({"reward_model": {"kind": "pairwise"}}, "reward_model.kind"),
        ({"sft": {"patience": 2}}, "sft.patience"),
        ({"sft": {"check_every": 0}}, "sft.check_every"),
        ({"sft": {"holdout_questions": -1}}, "sft.holdout_questions"),
    ],
)
def test_missing_or_impossible_values_name_the_field(patch: dict[str, Any], param: str) -> None:
    assert param_of(spec_with(**patch)) == param


def test_gold_reward_needs_a_dataset_with_answers() -> None:
    custom = {"task": "custom", "path": "rows.jsonl"}
    assert param_of(spec_with(data=custom, rl={"reward": "gold"})) == "rl.reward"
    # the same dataset declared with answers, or a built-in task, may use the gold control
    assert (
        JobSpec.from_dict(spec_with(data={**custom, "has_gold": True}, rl={"reward": "gold"})).rl.reward
        == "gold"
    )
    assert JobSpec.from_dict(spec_with(rl={"reward": "gold"})).data.gold_available


def test_batch_must_be_divisible_by_samples_per_prompt() -> None:
    with pytest.raises(ConfigError, match="divisible") as info:
        JobSpec.from_dict(spec_with(rl={"batch_size": 30, "samples_per_prompt": 4, "mini_batch_size": 30}))
    assert info.value.param == "rl.batch_size"
    assert "try 28" in info.value.message  # the message suggests a fix


def test_grpo_needs_a_group() -> None:
    raw = spec_with(rl={"algo": "grpo", "samples_per_prompt": 1})
    assert param_of(raw) == "rl.samples_per_prompt"
    ok = JobSpec.from_dict(spec_with(rl={"algo": "grpo", "samples_per_prompt": 4, "batch_size": 32}))
    assert ok.rl.prompts_per_batch == 8


def test_mini_batch_must_divide_batch() -> None:
    assert param_of(spec_with(rl={"batch_size": 64, "mini_batch_size": 24})) == "rl.mini_batch_size"


def test_stage_configs_validate_on_their_own() -> None:
    with pytest.raises(ConfigError) as info:
        RLConfig(steps=-1)
    assert info.value.param == "rl.steps"


def test_to_dict_redacts_the_api_key_and_round_trips() -> None:
    raw = spec_with(rl={"algo": "grpo", "samples_per_prompt": 4, "batch_size": 32}, data={"train_size": 10})
    spec = JobSpec.from_dict(raw)
    full = spec.to_dict()
    assert full["teacher"]["api_key"] == "sk-secret"
    redacted = spec.to_dict(redact=True)
    assert redacted["teacher"]["api_key"] == "***"
    assert "sk-secret" not in json.dumps(redacted)
    # plain data (what YAML/JSON give back) rebuilds an equal spec
    assert JobSpec.from_dict(json.loads(json.dumps(full))) == spec
    no_key = JobSpec.from_dict(spec_with(teacher={"api_key": None}))
    assert no_key.to_dict(redact=True)["teacher"]["api_key"] is None


def test_describe_lists_every_field_with_help() -> None:
    fields = describe(RLConfig)
    assert fields["batch_size"]["default"] == 64
    assert all(info["help"] for info in fields.values())
