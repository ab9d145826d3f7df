"""The code PPO and GRPO share: completion log-probabilities under left padding, the rollout batch (an
Experience), the update's micro-batches and clipping, and the loop's cancel and resume behaviour (run for both
trainers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from twofold.core.records import Cancelled
from twofold.core.rl.rollout import Experience, completion_logprobs, rollout
from twofold.core.training import load_state


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


def three_prompts_twice(toy: Any) -> Experience:
    """A rollout of two samples for each of three toy prompts from a fresh micro policy."""
    model, tok = toy.model()
    return rollout(
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


def test_rollout_repeats_each_prompt_consecutively(toy: Any) -> None:
    batch = three_prompts_twice(toy)
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


def test_an_experience_selects_and_splits_every_per_response_field(toy: Any) -> None:
    batch = three_prompts_twice(toy)
    batch.advantages = torch.arange(6.0).unsqueeze(1).expand_as(batch.completion_mask)
    picked = batch.select(torch.tensor([4, 1]))
    assert [it.id for it in picked.items] == ["q2", "q0"] and picked.texts == [batch.texts[4], batch.texts[1]]
    assert torch.equal(picked.sequences, batch.sequences[[4, 1]]) and picked.prompt_len == batch.prompt_len
    assert picked.advantages is not None and picked.advantages[:, 0].tolist() == [4.0, 1.0]
    assert picked.values is None  # a field not filled yet stays empty
    parts = batch.split(3)
    assert [p.size for p in parts] == [2, 2, 2] and batch.split(1) == [batch]
    assert torch.equal(torch.cat([p.logprobs for p in parts]), batch.logprobs)
    assert isinstance(parts[0], Experience)


#: metrics each trainer reports every step, besides the shared reward, kl, response_len, entropy, step_seconds
ALGO_METRICS = {
    "ppo": {
        "policy_loss",
        "value_loss",
        "clipfrac",
        "value_clipfrac",
        "policy_grad_norm",
        "critic_grad_norm",
    },
    "grpo": {"policy_loss", "kl_loss", "clipfrac", "policy_grad_norm"},
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
    state = load_state(tmp_path)
    assert state is not None and state["step"] == 2 and state["kind"] == algo


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
        assert torch.equal(resumed.state_dict()[name], value), name
    state = load_state(tmp_path)
    assert state is not None and state["step"] == 6


def test_reward_fn_must_return_one_reward_per_completion(toy: Any) -> None:
    with pytest.raises(ValueError, match="reward_fn"):
        toy.train("ppo", toy.Recorder(), lambda items, texts: [1.0], steps=1)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_saves_follow_rl_save_every(algo: str, toy: Any, tmp_path: Path) -> None:
    saved: list[list[str]] = []

    class Watch(toy.Recorder):
        def should_stop(self) -> bool:
            saved.append(sorted(p.name for p in tmp_path.glob("step-*")))  # before each step
            return False

    toy.train(algo, Watch(), steps=5, save_every=2, state_dir=tmp_path)
    assert saved == [[], [], ["step-00000002"], ["step-00000002"], ["step-00000004"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000005"]  # and at the end


def one_update(toy: Any, algo: str, **fields: Any) -> tuple[Any, dict[str, float]]:
    """One RL step from a fresh micro policy whose update is a single optimiser step per learner."""
    cb = toy.Recorder()
    model, _ = toy.train(algo, cb, steps=1, batch_size=16, mini_batch_size=16, ppo_epochs=1, **fields)
    return model, cb.metric_calls[-1][2]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_rl_micro_batches_accumulate_to_the_mini_batch_gradient(algo: str, toy: Any) -> None:
    whole, full = one_update(toy, algo)
    split, micro = one_update(toy, algo, gradient_accumulation_steps=4)  # 4 micro-batches of 4 responses
    assert micro["reward"] == full["reward"]  # the same rollout
    keys = ["policy_loss", "policy_grad_norm"] + (["value_loss", "critic_grad_norm"] if algo == "ppo" else [])
    for key in keys:
        assert micro[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    assert full["policy_grad_norm"] > 0
    for (name, a), b in zip(whole.named_parameters(), split.parameters(), strict=True):
        if a.grad is not None:
            assert b.grad is not None
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_the_policy_gradient_is_clipped_to_rl_max_grad_norm(algo: str, toy: Any) -> None:
    model, values = one_update(toy, algo, max_grad_norm=1e-4)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert values["policy_grad_norm"] > 1e-3
    assert float(grads.norm()) == pytest.approx(1e-4, rel=1e-4)
