"""SFT warm-up: completion-only training that learns, changes weights, and resumes exactly where it stopped."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from twofold.core.configs import SFTConfig
from twofold.core.models import build_tiny
from twofold.core.records import Cancelled, NullCallbacks, TeacherSample
from twofold.core.sft import AgreementCheck, sft_examples, train_causal_lm
from twofold.core.tasks import Item, arithmetic
from twofold.core.training import collate, encode_pairs, load_state

pytestmark = pytest.mark.usefixtures("one_thread")

ITEMS = arithmetic.load("train", size=32, seed=5)
PROMPTS = [arithmetic.build_prompt(it) for it in ITEMS]
COMPLETIONS = [" " + (it.solution or "") for it in ITEMS]
# 32 examples in batches of 8 for 24 steps, resume state saved every 10 steps (progress is reported every 10)
CFG = SFTConfig(epochs=6, lr=5e-3, batch_size=8, warmup_steps=3, max_length=128, save_every=10)
ONE_STEP = SFTConfig(epochs=0.25, lr=5e-3, batch_size=8, warmup_steps=3, max_length=128)


class StopAt(NullCallbacks):
    """Records progress, metrics and events; asks to stop once progress reaches ``stop_step``."""

    def __init__(self, stop_step: int | None = None) -> None:
        self.stop_step = stop_step
        self.steps: list[int] = []
        self.values: list[dict[str, float]] = []
        self.events: list[tuple[str, dict[str, Any] | None]] = []

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Remember the values."""
        self.values.append(values)

    def progress(self, stage: str, done: int, total: int) -> None:
        """Remember the step."""
        self.steps.append(done)

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Remember the event."""
        self.events.append((type, data))

    def should_stop(self) -> bool:
        """Stop once ``stop_step`` has been reported."""
        return self.stop_step is not None and bool(self.steps) and self.steps[-1] >= self.stop_step


class CrashAt(StopAt):
    """Dies (as a killed worker would, saving nothing) when progress reaches ``crash_step``."""

    def __init__(self, crash_step: int) -> None:
        super().__init__()
        self.crash_step = crash_step

    def progress(self, stage: str, done: int, total: int) -> None:
        """Raise at the crash step."""
        if done >= self.crash_step:
            raise RuntimeError("worker lost")
        super().progress(stage, done, total)


@torch.no_grad()
def completion_loss(model: torch.nn.Module, tok: Any) -> float:
    """Mean completion-only loss over the training pairs."""
    ids, mask, labels = collate(encode_pairs(tok, PROMPTS, COMPLETIONS, max_length=128), tok.pad_token_id)
    return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


@pytest.fixture(scope="module")
def straight_run(one_thread: None) -> dict[str, Any]:
    """One uninterrupted run, shared: the model before and after, its losses and summary."""
    model, tok = build_tiny("micro", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_before = completion_loss(model, tok)
    summary = train_causal_lm(model, tok, PROMPTS, COMPLETIONS, cfg=CFG, callbacks=NullCallbacks())
    return {
        "before": before,
        "after": model.state_dict(),
        "loss_before": loss_before,
        "loss_after": completion_loss(model, tok),
        "summary": summary,
    }


def test_training_lowers_the_loss_and_changes_the_weights(straight_run: dict[str, Any]) -> None:
    summary, before, after = straight_run["summary"], straight_run["before"], straight_run["after"]
    assert summary["steps"] == 24 and summary["examples"] == 32
    assert straight_run["loss_after"] < 0.8 * straight_run["loss_before"], straight_run
    assert summary["final_loss"] < summary["first_loss"]
    changed = [k for k, v in after.items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)  # every tensor moved


def assert_same_weights(a: torch.nn.Module, b: dict[str, torch.Tensor]) -> None:
    """Bitwise equality of ``a``'s weights with the state dict ``b``."""
    for name, value in a.state_dict().items():
        assert torch.equal(value, b[name]), name


@pytest.mark.parametrize(
    ("interrupt", "error", "saved_at", "reported"),
    [
        # a killed worker saves nothing: the state of step 10 (cfg.save_every) remains
        (lambda: CrashAt(20), RuntimeError, 10, [20, 24]),
        # a cancel saves the step it stopped at
        (lambda: StopAt(20), Cancelled, 20, [24]),
    ],
    ids=["crash", "cancel"],
)
def test_an_interrupted_run_resumes_and_ends_bitwise_where_an_uninterrupted_run_does(
    tmp_path: Path,
    straight_run: dict[str, Any],
    interrupt: Any,
    error: type[Exception],
    saved_at: int,
    reported: list[int],
) -> None:
    model, tok = build_tiny("micro", seed=0)
    with pytest.raises(error):
        train_causal_lm(model, tok, PROMPTS, COMPLETIONS, cfg=CFG, callbacks=interrupt(), state_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step-{saved_at:08d}"]
    state = load_state(tmp_path)  # weights_only=True: tensors and plain data only
    assert state is not None and state["step"] == saved_at and state["config"]["save_every"] == 10
    resumed, tok = build_tiny("micro", seed=0)  # fresh weights: the state must restore them
    cb = StopAt()
    summary = train_causal_lm(resumed, tok, PROMPTS, COMPLETIONS, cfg=CFG, callbacks=cb, state_dir=tmp_path)
    assert ("resumed", {"step": saved_at, "changed": []}) in cb.events
    assert cb.steps == reported  # progress is reported every 10 steps, from the resumed step on
    assert summary["steps"] == 24 and summary["resumed_from"] == saved_at
    assert summary["first_loss"] == straight_run["summary"]["first_loss"]  # restored with the state
    assert_same_weights(resumed, straight_run["after"])


def one_step(**overrides: Any) -> tuple[torch.nn.Module, dict[str, float]]:
    """One SFT step of 8 sequences from the same start; returns the model and the step's metrics."""
    model, tok = build_tiny("micro", seed=0)
    cb = StopAt()
    cfg = dataclasses.replace(ONE_STEP, **overrides)
    assert train_causal_lm(model, tok, PROMPTS, COMPLETIONS, cfg=cfg, callbacks=cb)["steps"] == 1
    return model, cb.values[-1]


def test_micro_batches_accumulate_to_the_whole_batch_gradient() -> None:
    whole, full = one_step()
    split, micro = one_step(gradient_accumulation_steps=4)  # 4 micro-batches of 2 sequences
    assert micro["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert micro["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-4)
    for (name, a), b in zip(whole.named_parameters(), split.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_the_gradient_is_clipped_to_sft_max_grad_norm() -> None:
    model, values = one_step(max_grad_norm=1e-3)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert values["grad_norm"] > 0.1  # the norm before clipping
    assert float(grads.norm()) == pytest.approx(1e-3, rel=1e-4)


def test_a_cancel_lands_within_one_step(tmp_path: Path) -> None:
    class CancelDuringStep(StopAt):
        calls = 0

        def should_stop(self) -> bool:
            self.calls += 1
            return self.calls > 3  # requested during step 3

    model, tok = build_tiny("micro", seed=0)
    with pytest.raises(Cancelled, match="cancelled at step 3 of 24"):
        train_causal_lm(
            model, tok, PROMPTS, COMPLETIONS, cfg=CFG, callbacks=CancelDuringStep(), state_dir=tmp_path
        )
    state = load_state(tmp_path)
    assert state is not None and state["step"] == 3


def test_stop_when_ends_training_early_in_eval_mode_at_a_checked_step() -> None:
    model, tok = build_tiny("micro", seed=0)
    asked: list[tuple[int, bool, bool]] = []

    def stop_when(step: int) -> bool:
        asked.append((step, model.training, torch.is_grad_enabled()))
        return step >= 15

    cb = StopAt()
    summary = train_causal_lm(
        model, tok, PROMPTS, COMPLETIONS, cfg=CFG, callbacks=cb, stop_when=stop_when, stop_check_every=5
    )
    assert asked == [(5, False, False), (10, False, False), (15, False, False)]
    assert summary["steps"] == 15 and summary["planned_steps"] == 24 and summary["stopped_early"]
    assert cb.steps[-1] == 15
    never = train_causal_lm(
        build_tiny("micro", seed=0)[0],
        tok,
        PROMPTS,
        COMPLETIONS,
        cfg=CFG,
        callbacks=NullCallbacks(),
        stop_when=lambda step: False,
        stop_check_every=5,
    )
    assert never["steps"] == 24 and not never["stopped_early"]


def test_an_early_stop_is_saved_and_a_rerun_does_not_train_on(tmp_path: Path) -> None:
    model, tok = build_tiny("micro", seed=0)
    asked: list[int] = []

    def stop_at_15(step: int) -> bool:
        asked.append(step)
        return step >= 15

    def train(m: torch.nn.Module) -> dict[str, Any]:
        return train_causal_lm(
            m, tok, PROMPTS, COMPLETIONS, cfg=CFG, callbacks=StopAt(), state_dir=tmp_path,
            stop_when=stop_at_15, stop_check_every=5,
        )  # fmt: skip

    first = train(model)
    assert first["steps"] == 15 and first["stopped_early"]
    state = load_state(tmp_path)
    assert state is not None and (state["step"], state["stopped_early"]) == (15, True)
    again, _ = build_tiny("micro", seed=0)
    rerun = train(again)
    assert rerun["steps"] == 15 and rerun["stopped_early"] and rerun["resumed_from"] == 15
    assert asked == [5, 10, 15]  # not asked again: the rerun took no step
    assert_same_weights(again, model.state_dict())


class Scripted(AgreementCheck):
    """An AgreementCheck whose agreements follow a script, to test what it does with them (the measurement
    itself is tested against real greedy answers below); it also snapshots the weights at each check."""

    def __init__(self, model: torch.nn.Module, tok: Any, script: list[float], patience: int) -> None:
        super().__init__(model, tok, ITEMS[:2], {}, arithmetic, max_new_tokens=8, patience=patience)
        self.script = list(script)
        self.seen: dict[int, dict[str, torch.Tensor]] = {}

    def agreement(self) -> float:
        """The next scripted value."""
        return self.script.pop(0)

    def __call__(self, step: int) -> bool:
        self.seen[step] = {k: v.clone() for k, v in self.model.state_dict().items()}
        return super().__call__(step)


def train_checked(check: Scripted) -> dict[str, Any]:
    """Train ``check``'s model on the test pairs, checking every 4 steps."""
    return train_causal_lm(
        check.model,
        check.tokenizer,
        PROMPTS,
        COMPLETIONS,
        cfg=CFG,
        callbacks=NullCallbacks(),
        stop_when=check,
        stop_check_every=4,
    )


def test_the_agreement_check_stops_after_patience_checks_without_a_gain_and_keeps_the_best_weights() -> None:
    model, tok = build_tiny("micro", seed=0)
    check = Scripted(model, tok, [0.1, 0.5, 0.5, 0.4, 0.3, 0.9], patience=3)
    summary = train_checked(check)
    # 0.5 at step 8 is not beaten at 12 (equal), 16 or 20 (lower): stop at 20, never reaching the 0.9
    assert summary["steps"] == 16 + 4 and summary["stopped_early"]
    assert [c["step"] for c in check.checks] == [4, 8, 12, 16, 20]
    chosen = check.keep_best()
    assert chosen["best_step"] == 8 and chosen["holdout_agreement"] == 0.5
    assert all(torch.equal(v, check.seen[8][k]) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, check.seen[20][k]) for k, v in model.state_dict().items())


def test_without_patience_the_agreement_check_never_stops_training() -> None:
    model, tok = build_tiny("micro", seed=0)
    check = Scripted(model, tok, [0.3, 0.2, 0.1, 0.1, 0.1], patience=0)
    summary = train_checked(check)
    assert summary["steps"] == 24 and not summary["stopped_early"]
    assert check.keep_best()["best_step"] == 4


def test_the_agreement_check_state_is_saved_and_resumed_with_training(tmp_path: Path) -> None:
    model, tok = build_tiny("micro", seed=0)
    first = Scripted(model, tok, [0.6, 0.2, 0.1], patience=0)
    with pytest.raises(RuntimeError, match="worker lost"):
        train_causal_lm(
            model,
            tok,
            PROMPTS,
            COMPLETIONS,
            cfg=CFG,
            callbacks=CrashAt(20),  # dies reporting step 20, before its check; the state of step 10 remains
            state_dir=tmp_path,
            stop_when=first,
            stop_check_every=5,
        )
    resumed_model, tok = build_tiny("micro", seed=0)
    again = Scripted(resumed_model, tok, [0.3, 0.2, 0.1], patience=0)
    train_causal_lm(
        resumed_model,
        tok,
        PROMPTS,
        COMPLETIONS,
        cfg=CFG,
        callbacks=StopAt(),
        state_dir=tmp_path,
        stop_when=again,
        stop_check_every=5,
    )
    # the checks at steps 5 and 10 came back with the state saved at step 10; 15 and 20 were made after resuming
    assert [(c["step"], c["agreement"]) for c in again.checks] == [(5, 0.6), (10, 0.2), (15, 0.3), (20, 0.2)]
    assert again.keep_best()["best_step"] == 5
    assert all(torch.equal(v, first.seen[5][k]) for k, v in resumed_model.state_dict().items())


def test_the_agreement_check_measures_greedy_answers_against_the_given_majority(
    arith_teacher_dir: Path,
) -> None:
    from twofold.core.evaluation import evaluate_model
    from twofold.core.models import load_causal_lm

    model, tok = load_causal_lm(arith_teacher_dir)  # a model whose answers parse (an untrained one's do not)
    items = ITEMS[:8]
    preds = [
        r["pred"]
        for r in evaluate_model(
            model, tok, items, arithmetic, model_name="m", benchmark="b", max_new_tokens=56, batch_size=8
        ).items
    ]
    # the majority equals the model's own answer on the first three questions and differs on the rest
    majority = {
        it.id: (p if i < 3 and p is not None else f"{i}999")
        for i, (it, p) in enumerate(zip(items, preds, strict=True))
    }
    expected = sum(1 for i, p in enumerate(preds) if i < 3 and p is not None) / 8
    assert expected > 0, preds
    check = AgreementCheck(model, tok, items, majority, arithmetic, max_new_tokens=56)
    assert check.agreement() == expected
    model.train()
    assert check(7) is False and check.checks == [{"step": 7, "agreement": round(expected, 4)}]
    assert model.training  # the check puts the model back in the mode it found it in
    with pytest.raises(ValueError, match="held-out question"):
        AgreementCheck(model, tok, [], {}, arithmetic, max_new_tokens=8)


def test_no_examples_is_an_error() -> None:
    model, tok = build_tiny("micro")
    with pytest.raises(ValueError, match="no training examples"):
        train_causal_lm(model, tok, [], [], cfg=CFG, callbacks=NullCallbacks())


def test_sft_examples_keep_only_agreeing_teacher_samples() -> None:
    items = [Item("a", "2+3?", "5"), Item("b", "1+1?", "2")]

    def ts(qid: str, temperature: float, index: int, answer: str | None) -> TeacherSample:
        return TeacherSample(qid, temperature, index, f"{qid} {temperature} {index} #### {answer}", answer)

    samples = [
        ts("a", 0.7, 0, "5"),
        ts("a", 0.7, 1, "6"),
        ts("a", 1.0, 0, "5"),
        ts("a", 1.0, 1, None),
        ts("b", 0.7, 0, "2"),
        ts("zzz", 0.7, 0, "1"),  # a question not in this job's items
    ]
    prompts, completions = sft_examples(items, samples, arithmetic.build_prompt, SFTConfig())
    assert completions == ["a 0.7 0 #### 5", "a 1.0 0 #### 5", "b 0.7 0 #### 2"]
    assert prompts == [arithmetic.build_prompt(items[0])] * 2 + [arithmetic.build_prompt(items[1])]
    _, capped = sft_examples(items, samples, arithmetic.build_prompt, SFTConfig(max_per_question=1))
    assert capped == ["a 0.7 0 #### 5", "b 0.7 0 #### 2"]
    _, strict = sft_examples(items, samples, arithmetic.build_prompt, SFTConfig(), min_vote_share=0.9)
    assert strict == ["b 0.7 0 #### 2"]  # "a" has 2 of 3 votes
