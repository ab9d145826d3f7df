"""The demo's summary: paired comparisons read from the per-item evaluation rows, and the table that prints them."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from twofold.cli.local import GOLD_CONTROL, _comparisons, demo_table, machine
from twofold.cli.main import cli
from twofold.core.configs import JobSpec
from twofold.core.presets import preset_spec


def write_rows(items_dir: Path, name: str, correct: list[bool]) -> None:
    items_dir.mkdir(exist_ok=True)
    with (items_dir / f"{name}.jsonl").open("w") as f:
        for i, ok in enumerate(correct):
            f.write(json.dumps({"id": f"q{i}", "correct": ok, "pred": "1", "gold": "1"}) + "\n")


def test_comparisons_pair_the_models_item_by_item_and_skip_a_missing_model(tmp_path: Path) -> None:
    # 100 problems: the teacher gets the first 80 right, the SFT student the first 60, the RL student 5-84
    write_rows(tmp_path, "teacher", [i < 80 for i in range(100)])
    write_rows(tmp_path, "sft", [i < 60 for i in range(100)])
    write_rows(tmp_path, "rl", [5 <= i < 85 for i in range(100)])
    comps = _comparisons(tmp_path)
    assert set(comps) == {"rl_vs_sft", "rl_vs_teacher"}  # no rl_gold rows: no gold comparison
    assert (comps["rl_vs_sft"]["a_only"], comps["rl_vs_sft"]["b_only"]) == (25, 5)
    assert comps["rl_vs_sft"]["points"] == 20.0 and comps["rl_vs_sft"]["verdict"] == "above"
    assert (comps["rl_vs_teacher"]["a_only"], comps["rl_vs_teacher"]["b_only"]) == (5, 5)
    assert comps["rl_vs_teacher"]["points"] == 0.0 and comps["rl_vs_teacher"]["verdict"] == "within noise"
    summary = {
        "test_size": 100,
        "teacher": {"accuracy": 0.8, "ci95": [0.71, 0.87]},
        "sft": {"accuracy": 0.6, "ci95": [0.5, 0.69]},
        "rl": {"accuracy": 0.8, "ci95": [0.71, 0.87]},
        "rl_gold": None,
        "pseudo_labels": {
            "count": 10,
            "accuracy_vs_gold": 0.9,
            "majority_accuracy_vs_gold": 0.8,
            "questions_kept": 9,
            "questions_total": 10,
        },
        "reward_model": {"accuracy": 0.7, "pairwise_accuracy": 0.75},
        "comparisons": comps,
        "stages": {"sft": 1.0},
        "seconds": 2.0,
    }
    table = demo_table(summary)
    assert "RL - SFT             +20.0  [" in table and "above" in table
    assert "RL - teacher          +0.0  [" in table and "within noise" in table
    assert "gold reward" not in table and "RL gold" not in table
    assert table.startswith("twofold demo: arithmetic, 100 held-out problems, greedy")
    dev = demo_table({**summary, "data_seed": 7})
    assert dev.startswith("twofold demo: arithmetic, 100 held-out problems (dev split, data seed 7), greedy")
    assert "machine:" not in table and "training steps" not in table  # a summary from before these fields
    full = demo_table(
        {
            **summary,
            "teacher_training": {"steps": 625, "validation_accuracy": 0.75},
            "machine": {"cpu": "AMD EPYC", "cores": 2, "isa": "AVX512", "torch": "2.13.0", "threads": 2},
        }
    )
    assert full.endswith(
        "  teacher: 625 training steps to 75.0% validation accuracy\n"
        "  machine: AMD EPYC, 2 cores, AVX512, torch 2.13.0 (2 threads)"
    )


def test_machine_names_the_cpu_and_the_instruction_set_torch_uses() -> None:
    m = machine()
    assert m["cores"] == os.cpu_count() and m["threads"] == torch.get_num_threads()
    assert m["isa"] in {"DEFAULT", "AVX2", "AVX512", "ZVECTOR", "SVE256", "SVE128", "NO AVX"} and m["cpu"]
    assert m["torch"] == torch.__version__


@pytest.mark.parametrize("seed", ["-1", "1000"])  # 1000: the teacher's own training and validation problems
def test_a_data_seed_outside_the_dev_range_is_refused_before_anything_runs(tmp_path: Path, seed: str) -> None:
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "demo"), "--data-seed", seed])
    assert res.exit_code == 2 and "--data-seed" in res.output and "0<=x<=999" in res.output
    assert not (tmp_path / "demo").exists()


def test_the_gold_control_is_rl_against_gold_then_a_score_of_its_own_checkpoint() -> None:
    spec = JobSpec.from_dict(preset_spec("demo", teacher_base_url="http://127.0.0.1:9/v1", teacher_model="t"))
    rl, score = GOLD_CONTROL
    gold = rl.apply(spec)
    assert (rl.stage, rl.name, gold.rl.reward) == ("rl", "rl_gold", "gold")
    assert gold == dataclasses.replace(spec, rl=dataclasses.replace(spec.rl, reward="gold"))  # nothing else
    scoring = score.apply(spec).evaluation
    assert score.stage == "evaluation" and scoring.models == (rl.name,) and not scoring.evaluate_teacher
