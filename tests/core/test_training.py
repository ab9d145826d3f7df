"""The shared training loop: micro-batch accumulation and clipping in ``Learner.step``, the data cursor, the one
state format (atomic, ``weights_only``), and ``TrainLoop``'s cadence, cancellation and exact resumption. Each
stage's own use of it is tested with the stage (test_sft.py, test_reward_model.py, rl/test_rollout.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from twofold.core.configs import ConfigError, RewardModelConfig, RLConfig, SFTConfig
from twofold.core.records import Cancelled, NullCallbacks
from twofold.core.training import (
    DataCursor,
    Learner,
    RunningStats,
    TrainLoop,
    load_state,
    pack,
    save_state,
    split_evenly,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_evenly_and_pack() -> None:
    assert split_evenly(range(7), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([1, 2], 4) == [[1], [2]]  # never an empty part
    assert split_evenly([1, 2, 3], 1) == [[1, 2, 3]]
    assert list(pack(range(5), 2)) == [[0, 1], [2, 3], [4]]
    sizes = {0: 3, 1: 1, 2: 1, 3: 4, 4: 1}
    assert list(pack([0, 1, 2, 3, 4], 4, sizes.__getitem__)) == [[0, 1], [2, 3], [4]]


def test_data_cursor_takes_across_epochs_reshuffles_and_resumes() -> None:
    cursor = DataCursor(5, seed=3)
    first, second = cursor.take(5), cursor.take(5)
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
    assert first != second  # a fresh order per epoch
    cursor = DataCursor(5, seed=3)
    cursor.take(3)
    saved = cursor.state_dict()
    expected = cursor.take(7)  # crosses into epochs 1 and 2
    resumed = DataCursor(5, seed=3)
    resumed.load_state_dict(saved)
    assert resumed.take(7) == expected
    with pytest.raises(ValueError, match="items"):
        DataCursor(6, seed=3).load_state_dict(saved)
    assert DataCursor(5, seed=3, prefix="a-").take(5) != DataCursor(5, seed=3, prefix="b-").take(5)


def test_data_cursor_batches_end_at_the_end_of_an_epoch() -> None:
    cursor = DataCursor(5, seed=0)
    batches = [cursor.next_batch(2) for _ in range(4)]
    assert [len(b) for b in batches] == [2, 2, 1, 2]  # the epoch's last batch is short; then epoch 1
    assert sorted(sum(batches[:3], [])) == [0, 1, 2, 3, 4] and cursor.epoch == 1
    weighted = DataCursor(4, seed=0)
    sizes = [5, 1, 1, 5]
    epoch: list[list[int]] = []
    while sum(map(len, epoch)) < 4:
        epoch.append(weighted.next_batch(5, sizes.__getitem__))
    assert sorted(sum(epoch, [])) == [0, 1, 2, 3] and weighted.epoch == 0
    for run in epoch[:-1]:  # whole items until their sizes reach the limit, and not one more
        assert sum(sizes[i] for i in run) >= 5 > sum(sizes[i] for i in run[:-1]), epoch


def test_running_stats_resume_exactly() -> None:
    stats = RunningStats(["loss"])
    for v in (4.0, 2.0):
        stats.update({"loss": v, "other": 1.0})
    assert (stats.first["loss"], stats.last["loss"], stats.mean("loss")) == (4.0, 2.0, 3.0)
    assert stats.ema["loss"] == pytest.approx(0.9 * 4.0 + 0.1 * 2.0)
    again = RunningStats(["loss"])
    again.load_state_dict(stats.state_dict())
    again.update({"loss": 1.0})
    stats.update({"loss": 1.0})
    assert again.state_dict() == stats.state_dict()


def regression(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """A tiny model and a batch of 12 examples of a noisy linear target."""
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 4, generator=gen))
        model.bias.zero_()
    x = torch.randn(12, 4, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 3.0, 0.5]) + 0.1 * torch.randn(12, generator=gen)
    return model, x, y


def mse_share(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> Any:
    """A loss function over index micro-batches: the micro-batch's mean squared error times its share."""

    def loss_fn(rows: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        share = len(rows) / batch
        loss = ((model(x[rows]).squeeze(-1) - y[rows]) ** 2).mean() * share
        return loss, {"loss": loss.item()}

    return loss_fn


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_micro_batches_accumulate_to_the_whole_batch_update(parts: int) -> None:
    whole, x, y = regression()
    split, _, _ = regression()
    learn = Learner(whole, torch.optim.SGD(whole.parameters(), lr=0.1), max_grad_norm=1e6)
    full_stats, full_norm = learn.step([list(range(12))], mse_share(whole, x, y, 12))
    learn = Learner(split, torch.optim.SGD(split.parameters(), lr=0.1), max_grad_norm=1e6)
    micro_stats, micro_norm = learn.step(split_evenly(range(12), parts), mse_share(split, x, y, 12))
    assert micro_norm == pytest.approx(full_norm, rel=1e-5) and full_norm > 0
    assert micro_stats["loss"] == pytest.approx(full_stats["loss"], rel=1e-5)
    for a, b in zip(whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_gradient_is_clipped_to_the_configured_norm() -> None:
    model, x, y = regression()
    before = [p.detach().clone() for p in model.parameters()]
    learn = Learner(model, torch.optim.SGD(model.parameters(), lr=1.0), max_grad_norm=1e-3)
    _, norm = learn.step([list(range(12))], mse_share(model, x, y, 12))
    assert norm > 1.0  # the reported norm is the one before clipping
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert float(moved.norm()) == pytest.approx(1e-3, rel=1e-4)  # SGD at lr 1 moves by the clipped gradient
    loose, _, _ = regression()
    _, norm = Learner(loose, torch.optim.SGD(loose.parameters(), lr=1.0), max_grad_norm=1e4).step(
        [list(range(12))], mse_share(loose, x, y, 12)
    )
    grads = torch.cat([p.grad.flatten() for p in loose.parameters() if p.grad is not None])
    assert float(grads.norm()) == pytest.approx(norm, rel=1e-6)  # below the limit: untouched


def test_state_is_written_atomically_and_newest_wins(tmp_path: Path) -> None:
    save_state(tmp_path, 2, {"step": 2})
    save_state(tmp_path, 4, {"step": 4, "w": torch.ones(2)})
    (tmp_path / ".tmp-crashed").mkdir()  # a save that died before its rename
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-crashed", "step-00000004"]
    state = load_state(tmp_path)
    assert state is not None and state["step"] == 4 and torch.equal(state["w"], torch.ones(2))
    assert not (tmp_path / ".tmp-crashed").exists()
    assert load_state(tmp_path / "missing") is None and load_state(None) is None


def test_a_failed_save_leaves_the_previous_state_whole(tmp_path: Path) -> None:
    save_state(tmp_path, 3, {"step": 3})
    with pytest.raises(Exception):  # noqa: B017  (whatever pickle raises for a function)
        save_state(tmp_path, 5, {"step": 5, "bad": lambda: None})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003"]  # no half-written directory
    state = load_state(tmp_path)
    assert state is not None and state["step"] == 3


class Boom:
    """An object whose unpickling would run code: ``weights_only`` loading must refuse it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.getenv, ("HOME",))


def test_a_state_file_holding_code_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "step-00000001"
    target.mkdir()
    torch.save({"step": 1, "payload": Boom()}, target / "state.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_state(tmp_path)


class Watch(NullCallbacks):
    """Records what the loop reports and which state the directory holds before each step; asks to stop on
    its ``stop_on``-th ``should_stop`` call (1-based), so a cancel requested during step ``k`` lands before step
    ``k + 1``."""

    def __init__(self, state_dir: Path | None = None, stop_on: int | None = None) -> None:
        self.state_dir, self.stop_on, self.calls = state_dir, stop_on, 0
        self.saved: list[list[str]] = []
        self.metric_steps: list[int] = []
        self.progress_calls: list[tuple[int, int]] = []
        self.events: list[tuple[str, str, dict[str, Any] | None]] = []

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Remember the step."""
        self.metric_steps.append(step)

    def progress(self, stage: str, done: int, total: int) -> None:
        """Remember the progress."""
        self.progress_calls.append((done, total))

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Remember the event."""
        self.events.append((level, type, data))

    def should_stop(self) -> bool:
        """Record the saved states, then stop on the chosen call."""
        self.calls += 1
        if self.state_dir is not None:
            self.saved.append(sorted(p.name for p in self.state_dir.glob("step-*")))
        return self.stop_on is not None and self.calls >= self.stop_on


def regression_loop(
    cb: Any, *, state_dir: Path | None, total: int = 9, save_every: int = 4, kind: str = "regression"
) -> tuple[TrainLoop, torch.nn.Module, Any]:
    """A TrainLoop over the regression data: each step draws a batch from the cursor and noise from the global
    torch RNG, so exact resumption needs the weights, the AdamW state, the cursor and the RNG."""
    model, x, y = regression()
    learner = Learner(model, torch.optim.AdamW(model.parameters(), lr=0.05), max_grad_norm=1.0)
    cursor = DataCursor(12, seed=1)
    stats = RunningStats(["loss"])
    loop = TrainLoop(
        stage="toy",
        kind=kind,
        total_steps=total,
        callbacks=cb,
        config=SFTConfig(save_every=save_every),
        learners={"model": learner},
        state_dir=state_dir,
        cursor=cursor,
        extra={"stats": stats},
        log_every=2,
    )

    def step(i: int) -> dict[str, float]:
        rows = cursor.next_batch(5)
        noisy = y + 0.1 * torch.randn(y.shape)  # the global torch RNG: resuming must restore it
        values, norm = learner.step([rows], mse_share(model, x, noisy, len(rows)))
        stats.update(values)
        return {**values, "grad_norm": norm}

    return loop, model, step


def test_the_loop_reports_saves_on_its_cadence_and_at_the_end(tmp_path: Path) -> None:
    cb = Watch(tmp_path)
    loop, _, step = regression_loop(cb, state_dir=tmp_path, total=9, save_every=4)
    result = loop.run(step)
    assert (result.steps, result.resumed_from, result.stopped_early) == (9, 0, False)
    assert cb.metric_steps == [2, 4, 6, 8, 9] and cb.progress_calls[-1] == (9, 9)
    # the state the directory held before steps 1..9: saves after steps 4 and 8, nothing else in between
    assert cb.saved == [[]] * 4 + [["step-00000004"]] * 4 + [["step-00000008"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000009"]  # and at the end
    state = torch.load(tmp_path / "step-00000009" / "state.pt", weights_only=True)
    assert set(state) == {
        "format",
        "kind",
        "step",
        "stopped_early",
        "config",
        "models",
        "optimizers",
        "rng",
        "cursor",
        "extra",
    }
    assert state["config"]["save_every"] == 4
    assert state["cursor"] == {"n": 12, "seed": 1, "epoch": 2, "pos": 12}  # batches of 5, 5, 2 per epoch
    assert state["extra"]["stats"]["count"] == 9


def test_cancel_lands_before_the_next_step_and_saves_that_step(tmp_path: Path) -> None:
    cb = Watch(tmp_path, stop_on=2)  # asked for during step 1
    loop, _, step = regression_loop(cb, state_dir=tmp_path)
    with pytest.raises(Cancelled, match="cancelled at step 1 of 9"):
        loop.run(step)
    state = load_state(tmp_path)
    assert state is not None and state["step"] == 1


def test_a_resumed_run_ends_bitwise_where_an_uninterrupted_one_does(tmp_path: Path) -> None:
    torch.manual_seed(0)
    loop, straight, step = regression_loop(NullCallbacks(), state_dir=None)
    loop.run(step)

    class Crash(Watch):
        def progress(self, stage: str, done: int, total: int) -> None:
            if done == 6:
                raise RuntimeError("worker lost")  # dies without saving: the state of step 4 remains

    torch.manual_seed(0)
    loop, _, step = regression_loop(Crash(), state_dir=tmp_path)
    with pytest.raises(RuntimeError, match="worker lost"):
        loop.run(step)
    torch.manual_seed(456)  # the resumed run must restore the RNG, not inherit it
    cb = Watch()
    loop, resumed, step = regression_loop(cb, state_dir=tmp_path)
    result = loop.run(step)
    assert result.resumed_from == 4 and result.steps == 9
    assert ("info", "resumed", {"step": 4, "changed": []}) in cb.events
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert loop.extra["stats"].state_dict()["count"] == 9


def test_a_state_of_another_kind_is_refused_and_another_format_ignored(tmp_path: Path) -> None:
    loop, _, step = regression_loop(NullCallbacks(), state_dir=tmp_path, total=2)
    loop.run(step)
    other, _, step = regression_loop(NullCallbacks(), state_dir=tmp_path, total=2, kind="other")
    with pytest.raises(ValueError, match="from 'regression' training"):
        other.run(step)
    save_state(tmp_path, 7, {"step": 7})  # a layout this code does not know
    cb = Watch()
    loop, _, step = regression_loop(cb, state_dir=tmp_path, total=2)
    assert loop.run(step).resumed_from == 0
    assert [t for _, t, _ in cb.events] == ["state_ignored"]


@pytest.mark.parametrize(
    ("cls", "kwargs", "param"),
    [
        (SFTConfig, {"gradient_accumulation_steps": 0}, "sft.gradient_accumulation_steps"),
        (SFTConfig, {"batch_size": 4, "gradient_accumulation_steps": 5}, "sft.gradient_accumulation_steps"),
        (
            SFTConfig,
            {"batch_size": 4096, "gradient_accumulation_steps": 2048},
            "sft.gradient_accumulation_steps",
        ),
        (SFTConfig, {"max_grad_norm": 0.0}, "sft.max_grad_norm"),
        (SFTConfig, {"max_grad_norm": 1e5}, "sft.max_grad_norm"),
        (SFTConfig, {"save_every": -1}, "sft.save_every"),
        (SFTConfig, {"save_every": 10**7}, "sft.save_every"),
        (RewardModelConfig, {"gradient_accumulation_steps": 65}, "reward_model.gradient_accumulation_steps"),
        (RewardModelConfig, {"max_grad_norm": -1.0}, "reward_model.max_grad_norm"),
        (RewardModelConfig, {"save_every": -5}, "reward_model.save_every"),
        (RLConfig, {"gradient_accumulation_steps": 3}, "rl.gradient_accumulation_steps"),  # 32 % 3
        (RLConfig, {"gradient_accumulation_steps": 64}, "rl.gradient_accumulation_steps"),  # > 32
        (RLConfig, {"max_grad_norm": 2e4}, "rl.max_grad_norm"),
        (RLConfig, {"save_every": 10**7}, "rl.save_every"),
    ],
)
def test_loop_options_are_bounded_and_name_their_field(cls: Any, kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(ConfigError) as err:
        cls(**kwargs)
    assert err.value.param == param


def test_loop_options_have_the_defaults_the_stages_had() -> None:
    for cfg in (SFTConfig(), RewardModelConfig()):
        assert (cfg.gradient_accumulation_steps, cfg.max_grad_norm, cfg.save_every) == (1, 1.0, 50)
    rl = RLConfig()
    assert (rl.gradient_accumulation_steps, rl.max_grad_norm, rl.save_every) == (1, 1.0, 25)
    assert RLConfig(mini_batch_size=32, gradient_accumulation_steps=8).gradient_accumulation_steps == 8
