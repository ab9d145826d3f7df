"""The code PPO and GRPO share: completion log-probabilities under left padding, the rollout batch, the data
cursor, atomic state files, and the outer loop's cancel and resume behaviour (run for both trainers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from twofold.core.records import Cancelled
from twofold.core.rl.rollout import DataCursor, completion_logprobs, load_state, rollout, save_state


def test_completion_logprobs_ignore_left_padding(toy: Any) -> None:
    model, tok = toy.model()
    model.eval()
    prompts = ["Q: 1\nA:", "Q: a much longer prompt\nA:"]
    gen = torch.Generator().manual_seed(0)
    batch = rollout(
        model,
        model,
        tok,
        [toy.items[0]],
        lambda it: prompts.pop(0),
        samples_per_prompt=2,
        temperature=1.0,
        max_new_tokens=6,
        generator=gen,
    )
    assert batch.sequences.shape == (2, batch.prompt_len + batch.completion_mask.shape[1])
    assert batch.attention_mask[0, 0] == 0  # the short prompt is left-padded
    for row in range(2):
        keep = batch.attention_mask[row].bool()
        alone = batch.sequences[row][keep].unsqueeze(0)  # the same row with no padding at all
        n_prompt = int(batch.attention_mask[row, : batch.prompt_len].sum())
        with torch.no_grad():
            logits = model(input_ids=alone).logits[0, n_prompt - 1 : -1]
        expected = torch.log_softmax(logits, -1).gather(-1, alone[0, n_prompt:, None]).squeeze(-1)
        n_comp = int(batch.completion_mask[row].sum())
        torch.testing.assert_close(batch.logprobs[row, :n_comp], expected, atol=1e-5, rtol=1e-5)
    # the policy is its own reference here, so the reference log-probabilities agree exactly
    torch.testing.assert_close(batch.ref_logprobs, batch.logprobs)


def test_rollout_repeats_each_prompt_consecutively(toy: Any) -> None:
    model, tok = toy.model()
    batch = rollout(
        model,
        model,
        tok,
        toy.items[:3],
        toy.prompt,
        samples_per_prompt=2,
        temperature=1.0,
        max_new_tokens=5,
        generator=torch.Generator().manual_seed(1),
    )
    assert [it.id for it in batch.items] == ["q0", "q0", "q1", "q1", "q2", "q2"]
    assert len(batch.texts) == batch.size == 6
    assert batch.completion_mask.shape == batch.logprobs.shape == batch.entropy.shape
    assert batch.completion_mask.shape[1] <= 5
    assert bool((batch.logprobs <= 0).all()) and bool(torch.isfinite(batch.logprobs).all())


def test_temperature_is_applied_to_logprobs(toy: Any) -> None:
    model, tok = toy.model()
    seqs = tok(["Q: 1\nA: 23"], return_tensors="pt")["input_ids"]
    attn = torch.ones_like(seqs)
    cold, _ = completion_logprobs(model, seqs, attn, seqs.shape[1] - 3, temperature=0.5)
    warm, _ = completion_logprobs(model, seqs, attn, seqs.shape[1] - 3, temperature=1.0)
    assert cold.shape == (1, 3)
    assert not torch.allclose(cold, warm)


def test_data_cursor_reshuffles_each_epoch_and_resumes() -> None:
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


def test_state_is_written_atomically_and_newest_wins(tmp_path: Path) -> None:
    save_state(tmp_path, 2, {"step": 2})
    save_state(tmp_path, 4, {"step": 4})
    (tmp_path / ".tmp-crashed").mkdir()  # a save that died before its rename
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-crashed", "step-00000004"]
    state = load_state(tmp_path, torch.device("cpu"))
    assert state is not None and state["step"] == 4
    assert not (tmp_path / ".tmp-crashed").exists()
    assert load_state(tmp_path / "missing", torch.device("cpu")) is None


#: metrics each trainer reports every step, besides the shared reward, kl, response_len, entropy, step_seconds
ALGO_METRICS = {
    "ppo": {"policy_loss", "value_loss", "clipfrac", "value_clipfrac"},
    "grpo": {"policy_loss", "kl_loss", "clipfrac"},
}


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_trainer_raises_a_toy_reward(algo: str, toy: Any) -> None:
    model, tok = toy.model()
    before = toy.params(model)
    cb = toy.Recorder()
    _, summary = toy.train(algo, cb, model=(model, tok), steps=24, stage="rl_gold")
    rewards = cb.series("reward")
    assert len(rewards) == 24 and summary["steps"] == 24 and summary["algo"] == algo
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.2, rewards
    assert abs(cb.series("kl")[0]) < 1e-5  # the policy starts as its own reference
    assert cb.series("kl")[-1] > 0
    shared = {"reward", "kl", "response_len", "entropy", "step_seconds"}
    assert all(set(values) == shared | ALGO_METRICS[algo] for _, _, values in cb.metric_calls)
    assert {stage for stage, _, _ in cb.metric_calls} == {"rl_gold"}
    assert cb.progress_calls[-1] == ("rl_gold", 24, 24)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert summary["final_reward"] == rewards[-1]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_cancel_raises_and_saves_state(algo: str, toy: Any, tmp_path: Path) -> None:
    cb = toy.Recorder(stop_after=2)
    with pytest.raises(Cancelled):
        toy.train(algo, cb, steps=10, state_dir=tmp_path)
    assert [done for _, done, _ in cb.progress_calls] == [1, 2]
    state = load_state(tmp_path, torch.device("cpu"))
    assert state is not None and state["step"] == 2


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_resume_continues_where_it_stopped(algo: str, toy: Any, tmp_path: Path) -> None:
    # every call starts from the same fresh weights, as a retried stage would
    straight_log = toy.ItemLog()
    straight, _ = toy.train(algo, toy.Recorder(), straight_log, steps=6, save_every=0, seed=5)

    first_log, resumed_log, cb = toy.ItemLog(), toy.ItemLog(), toy.Recorder()
    toy.train(algo, toy.Recorder(), first_log, steps=2, save_every=0, seed=5, state_dir=tmp_path)
    resumed, summary = toy.train(algo, cb, resumed_log, steps=6, save_every=0, seed=5, state_dir=tmp_path)

    assert summary["resumed_from"] == 2 and summary["steps"] == 6
    assert [step for _, step, _ in cb.metric_calls] == [3, 4, 5, 6]
    assert any(kind == "resumed" and data and data["step"] == 2 for _, _, kind, data in cb.events)
    # the data cursor and the sampler RNG continue exactly: same questions and same samples as one straight run
    assert first_log.items + resumed_log.items == straight_log.items
    assert first_log.texts + resumed_log.texts == straight_log.texts
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)
    state = load_state(tmp_path, torch.device("cpu"))
    assert state is not None and state["step"] == 6


def test_reward_fn_must_return_one_reward_per_completion(toy: Any) -> None:
    with pytest.raises(ValueError, match="reward_fn"):
        toy.train("ppo", toy.Recorder(), lambda items, texts: [1.0], steps=1)
