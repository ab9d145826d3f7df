"""The demo's tiny teacher trains until it reaches its target accuracy on its own validation problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twofold.core.models import load_causal_lm
from twofold.core.tiny_teacher import ensure_tiny_teacher, is_current, train_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"examples": 640, "check_size": 8, "check_every": 4}  # at most 10 steps


def test_training_stops_once_the_target_is_reached_and_records_its_checks(tmp_path: Path) -> None:
    meta = train_tiny_teacher(tmp_path / "t", recipe={**SMALL, "target_accuracy": 0.0, "check_from": 0})
    assert meta["stopped_early"] and meta["steps"] == 4 and meta["planned_steps"] == 10
    assert meta["checks"] == [{"step": 4, "accuracy": meta["checks"][0]["accuracy"]}]
    saved = json.loads((tmp_path / "t" / "twofold_teacher.json").read_text())
    assert saved["steps"] == 4 and saved["recipe"]["target_accuracy"] == 0.0
    load_causal_lm(tmp_path / "t")  # a loadable HF checkpoint
    # the demo reuses a cached teacher only when it was trained with the current recipe
    assert is_current(tmp_path / "t", recipe={**SMALL, "target_accuracy": 0.0, "check_from": 0})
    assert not is_current(tmp_path / "t")  # the default recipe differs
    assert not is_current(tmp_path / "missing")
    (tmp_path / "t" / "twofold_teacher.json").write_text("{not json")
    assert not is_current(tmp_path / "t", recipe={**SMALL, "target_accuracy": 0.0, "check_from": 0})


def test_an_unreachable_target_trains_every_step_and_none_checks_nothing(tmp_path: Path) -> None:
    meta = train_tiny_teacher(tmp_path / "a", recipe={**SMALL, "target_accuracy": 1.01, "check_from": 0})
    assert not meta["stopped_early"] and meta["steps"] == 10
    assert [c["step"] for c in meta["checks"]] == [4, 8]  # never at the last step: training ends there anyway
    out = ensure_tiny_teacher(tmp_path / "cache", recipe={**SMALL, "target_accuracy": None})
    meta = json.loads((out / "twofold_teacher.json").read_text())
    assert meta["steps"] == 10 and meta["checks"] == []
