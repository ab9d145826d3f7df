"""Reward model: the Bradley-Terry loss on a hand-computed case, and a micro model learning a separable rule."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import torch

from twofold.core.configs import RewardModelConfig
from twofold.core.models import build_reward_model, build_tiny
from twofold.core.records import Label, NullCallbacks
from twofold.core.reward_model import bradley_terry_loss, score_responses, train_reward_model
from twofold.core.tasks import Item, arithmetic

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bradley_terry_loss_on_a_hand_computed_case() -> None:
    scores = torch.tensor([2.0, 0.5, 1.0, -1.0, 3.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2])
    loss, pairs = bradley_terry_loss(scores, labels, groups)
    # pairs within a group, agreeing minus disagreeing: (2.0 - 0.5) and (1.0 - (-1.0)); item 4 has no partner
    expected = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(-2.0))) / 2
    assert pairs == 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_counts_every_pair_in_a_group() -> None:
    scores = torch.tensor([1.0, 0.0, 0.0, -2.0], requires_grad=True)
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    loss, pairs = bradley_terry_loss(scores, labels, torch.zeros(4, dtype=torch.long))
    diffs = [1.0, 3.0, 0.0, 2.0]  # (0,2) (0,3) (1,2) (1,3)
    assert pairs == 4
    assert float(loss.detach()) == pytest.approx(sum(math.log1p(math.exp(-d)) for d in diffs) / 4, rel=1e-6)
    loss.backward()
    assert (
        scores.grad is not None and scores.grad[0] < 0 < scores.grad[3]
    )  # push agreeing up, disagreeing down


def test_bradley_terry_without_pairs_is_zero_and_differentiable() -> None:
    scores = torch.tensor([1.0, 2.0], requires_grad=True)
    loss, pairs = bradley_terry_loss(scores, torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
    assert pairs == 0 and float(loss.detach()) == 0.0
    loss.backward()
    assert scores.grad is not None and torch.equal(scores.grad, torch.zeros(2))


def separable_labels(n_questions: int = 48, per_question: int = 4) -> tuple[list[Item], list[Label]]:
    """Responses labelled 1 exactly when they end with ``#### 1``; each question has both kinds."""
    rng = random.Random(0)
    items = arithmetic.load("train", size=n_questions, seed=9)
    labels = []
    for it in items:
        for j in range(per_question):
            good = j % 2 == 0
            steps = f"{rng.randint(2, 20)}+{rng.randint(1, 9)}={rng.randint(3, 29)}."
            answer = "1" if good else str(rng.randint(2, 9))
            labels.append(Label(it.id, "student", j, f" {steps} #### {answer}", answer, "1", int(good), 0.5))
    return items, labels


@pytest.fixture(scope="module")
def trained(one_thread: None) -> dict[str, Any]:
    """A micro reward model trained on the separable labels (shared by the tests below)."""
    items, labels = separable_labels()
    base, tok = build_tiny("micro", seed=0)
    rm = build_reward_model(base, tok)
    before = {k: v.clone() for k, v in rm.state_dict().items()}
    cfg = RewardModelConfig(
        epochs=3, lr=1e-2, batch_size=32, max_length=128, holdout_fraction=0.25, loss="both"
    )
    result = train_reward_model(
        rm, tok, labels, items, arithmetic.build_prompt, cfg=cfg, callbacks=NullCallbacks()
    )
    return {"rm": rm, "tok": tok, "items": items, "labels": labels, "result": result, "before": before}


def test_a_micro_reward_model_learns_a_separable_rule(trained: dict[str, Any]) -> None:
    result = trained["result"]
    assert result["holdout_questions"] == 12 and result["train_questions"] == 36
    assert result["n"] == 12 * 4
    assert result["accuracy"] > 0.8, result
    assert result["pairwise_accuracy"] > 0.8, result
    moved = [k for k, v in trained["rm"].state_dict().items() if not torch.equal(v, trained["before"][k])]
    assert "score.weight" in moved and len(moved) > len(trained["before"]) // 2


def test_scores_are_probabilities_that_rank_the_rule(trained: dict[str, Any]) -> None:
    item = trained["items"][0]
    prompt = arithmetic.build_prompt(item)
    good = [" 3+4=7. #### 1", " 10+2=12. #### 1"]
    bad = [" 3+4=7. #### 7", " 10+2=12. #### 5"]
    scores = score_responses(trained["rm"], trained["tok"], [prompt] * 4, good + bad, batch_size=3)
    assert len(scores) == 4 and all(0.0 < x < 1.0 for x in scores)
    assert min(scores[:2]) > max(scores[2:])
    assert trained["rm"].training is False


def test_labels_of_unknown_questions_only_is_an_error() -> None:
    base, tok = build_tiny("micro")
    stray = [Label("nope", "student", 0, "#### 1", "1", "1", 1, 1.0)]
    with pytest.raises(ValueError, match="no labelled responses"):
        train_reward_model(
            build_reward_model(base, tok),
            tok,
            stray,
            [],
            arithmetic.build_prompt,
            cfg=RewardModelConfig(),
            callbacks=NullCallbacks(),
        )


# --- the implicit reward model: beta * sum_t log(pi / pi_ref) over the response --------------------------------


def implicit_pair(seed: int = 0) -> tuple[Any, Any, Any]:
    """A micro causal LM (the reward model), an identical frozen copy (its reference), and the tokenizer."""
    import copy

    from twofold.core.models import build_tiny

    rm, tok = build_tiny("micro", seed=seed)
    return rm, copy.deepcopy(rm), tok


def test_implicit_score_is_beta_times_the_response_log_ratio() -> None:
    from twofold.core.reward_model import RewardScorer, _pad_left
    from twofold.core.training import encode_pairs

    rm, ref, tok = implicit_pair()
    with torch.no_grad():  # make the reward model differ from its reference
        for p in rm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts, responses = ["Q: 2+2?\nA:", "Q: long prompt here?\nA:"], [" 4 #### 4", " #### 7"]
    enc = encode_pairs(tok, prompts, responses, max_length=64, add_eos=False)
    ids, mask, completion = _pad_left(enc, tok.pad_token_id, torch.device("cpu"))
    got = RewardScorer(rm, "implicit", ref, beta=0.3)(ids, mask, completion)

    def response_logprob(model: Any, prompt: str, response: str) -> float:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(response, add_special_tokens=False)["input_ids"]
        logits = model(input_ids=torch.tensor([p + r])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        return sum(float(logp[len(p) + t - 1, r[t]]) for t in range(len(r)))  # position i predicts token i+1

    with torch.no_grad():
        want = [
            0.3 * (response_logprob(rm, p, r) - response_logprob(ref, p, r))
            for p, r in zip(prompts, responses, strict=True)
        ]
    assert got.tolist() == pytest.approx(want, abs=1e-4)
    assert abs(want[0]) > 1e-3  # the check is not vacuous


def test_an_untrained_implicit_reward_model_scores_one_half() -> None:
    from twofold.core.reward_model import RewardScorer

    rm, ref, tok = implicit_pair()
    item = arithmetic.load("train", size=1, seed=0)[0]
    scores = score_responses(
        RewardScorer(rm, "implicit", ref, beta=1.0), tok, [arithmetic.build_prompt(item)] * 2, [" 1+2=3.", ""]
    )
    assert scores == pytest.approx([0.5, 0.5], abs=1e-6)


def test_an_implicit_reward_model_needs_its_reference() -> None:
    from twofold.core.reward_model import RewardScorer

    rm, _, tok = implicit_pair()
    with pytest.raises(ValueError, match="reference"):
        RewardScorer(rm, "implicit", None)
    items, labels = separable_labels(8, 2)
    with pytest.raises(ValueError, match="reference"):
        train_reward_model(
            rm,
            tok,
            labels,
            items,
            arithmetic.build_prompt,
            cfg=RewardModelConfig(kind="implicit", init="sft"),
            callbacks=NullCallbacks(),
        )


def test_an_implicit_reward_model_learns_a_separable_rule_saves_and_loads(tmp_path: Any) -> None:
    from twofold.core.reward_model import load_reward_scorer, reward_model_meta, save_reward_model

    items, labels = separable_labels()
    rm, ref, tok = implicit_pair()
    frozen = {k: v.clone() for k, v in ref.state_dict().items()}
    cfg = RewardModelConfig(
        kind="implicit",
        init="sft",
        beta=0.5,
        epochs=3,
        lr=3e-3,
        batch_size=32,
        max_length=128,
        holdout_fraction=0.25,
    )
    result = train_reward_model(
        rm, tok, labels, items, arithmetic.build_prompt, cfg=cfg, callbacks=NullCallbacks(), ref=ref
    )
    # labels are half positive: ranking is learned fully, the 0.5 threshold (no bias term) less so
    assert result["pairwise_accuracy"] > 0.8 and result["accuracy"] > 0.65, result
    assert all(torch.equal(v, frozen[k]) for k, v in ref.state_dict().items())  # the reference never moves
    assert all(p.grad is None for p in ref.parameters())  # and no gradient ever reached it

    out = save_reward_model(rm, tok, tmp_path / "rm", cfg)
    assert reward_model_meta(out) == {"kind": "implicit", "beta": 0.5, "max_length": 128, "reference": "sft"}
    scorer = load_reward_scorer(out, ref=ref)
    prompt = arithmetic.build_prompt(items[0])
    texts = [" 3+4=7. #### 1", " 3+4=7. #### 7"]
    loaded = score_responses(scorer, tok, [prompt] * 2, texts)
    assert loaded[0] > loaded[1]
    from twofold.core.reward_model import RewardScorer

    assert loaded == pytest.approx(
        score_responses(RewardScorer(rm, "implicit", ref, 0.5), tok, [prompt] * 2, texts)
    )
    with pytest.raises(ValueError, match="reference"):
        load_reward_scorer(out)  # an implicit reward model cannot score without the SFT model


def test_a_scalar_reward_model_directory_without_metadata_loads_as_scalar(
    trained: dict[str, Any], tmp_path: Any
) -> None:
    from twofold.core.models import save_hf
    from twofold.core.reward_model import load_reward_scorer, reward_model_meta

    save_hf(trained["rm"], trained["tok"], tmp_path / "plain")
    assert reward_model_meta(tmp_path / "plain") == {"kind": "scalar"}
    scorer = load_reward_scorer(tmp_path / "plain")
    prompt = arithmetic.build_prompt(trained["items"][0])
    assert score_responses(scorer, trained["tok"], [prompt], [" 3+4=7. #### 1"]) == pytest.approx(
        score_responses(trained["rm"], trained["tok"], [prompt], [" 3+4=7. #### 1"])
    )


# --- the shared loop as the reward model uses it -----------------------------------------------------------------

#: 12 training questions of 4 responses in steps of 2 questions: 6 steps an epoch, 12 in all, state every 4 steps
LOOP_CFG = RewardModelConfig(
    epochs=2, lr=1e-2, batch_size=8, max_length=96, holdout_fraction=0.25, save_every=4
)


class Reports(NullCallbacks):
    """Keeps metrics and events; raises like a killed worker at progress ``crash_at``; asks to stop from its
    ``stop_on``-th ``should_stop`` call on."""

    def __init__(self, crash_at: int | None = None, stop_on: int | None = None) -> None:
        self.crash_at, self.stop_on, self.calls = crash_at, stop_on, 0
        self.values: list[dict[str, float]] = []
        self.events: list[tuple[str, dict[str, Any] | None]] = []

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Remember the values."""
        self.values.append(values)

    def progress(self, stage: str, done: int, total: int) -> None:
        """Die at the crash step."""
        if self.crash_at is not None and done >= self.crash_at:
            raise RuntimeError("worker lost")

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Remember the event."""
        self.events.append((type, data))

    def should_stop(self) -> bool:
        """Stop from the chosen call on."""
        self.calls += 1
        return self.stop_on is not None and self.calls >= self.stop_on


def train_small(cb: Any, state_dir: Any = None, kind: str = "scalar", **overrides: Any) -> tuple[Any, Any]:
    """A micro reward model of ``kind`` trained on 16 questions with ``LOOP_CFG`` (and ``overrides``)."""
    import copy
    import dataclasses

    items, labels = separable_labels(16, 4)
    base, tok = build_tiny("micro", seed=0)
    rm, ref = (base, copy.deepcopy(base)) if kind == "implicit" else (build_reward_model(base, tok), None)
    extra = {"kind": kind, "init": "sft"} if kind == "implicit" else {}
    cfg = dataclasses.replace(LOOP_CFG, **extra, **overrides)
    summary = train_reward_model(
        rm, tok, labels, items, arithmetic.build_prompt, cfg=cfg, callbacks=cb, state_dir=state_dir, ref=ref
    )
    return rm, summary


def test_a_crashed_reward_model_run_resumes_bitwise(tmp_path: Any) -> None:
    straight, summary = train_small(NullCallbacks())
    assert summary["steps"] == 12
    with pytest.raises(RuntimeError, match="worker lost"):
        train_small(Reports(crash_at=10), tmp_path)  # progress is reported every 10 steps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000008"]  # cfg.save_every = 4
    cb = Reports()
    resumed, summary = train_small(cb, tmp_path)
    assert summary["resumed_from"] == 8 and summary["steps"] == 12
    assert ("resumed", {"step": 8, "changed": []}) in cb.events
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_a_reward_model_cancel_lands_within_one_step_and_saves_it(tmp_path: Any) -> None:
    from twofold.core.records import Cancelled
    from twofold.core.training import load_state

    with pytest.raises(Cancelled, match="cancelled at step 2 of 12"):
        train_small(Reports(stop_on=3), tmp_path)  # requested during step 2
    state = load_state(tmp_path)
    assert state is not None and state["step"] == 2 and state["kind"] == "reward_model/scalar"


@pytest.mark.parametrize("kind", ["scalar", "implicit"])
def test_reward_model_micro_batches_accumulate_to_the_whole_batch_gradient(kind: str) -> None:
    one_step = {"epochs": 0.1, "batch_size": 16}  # one step of 4 questions (16 responses, 16 pairs)
    full_cb, micro_cb = Reports(), Reports()
    whole, _ = train_small(full_cb, kind=kind, **one_step)
    split, _ = train_small(micro_cb, kind=kind, gradient_accumulation_steps=2, **one_step)
    full, micro = full_cb.values[0], micro_cb.values[0]
    assert full["pairs"] == micro["pairs"] == 16  # splitting by question keeps every pair
    for key in ("loss", "bce", "bt", "accuracy", "grad_norm"):
        assert micro[key] == pytest.approx(full[key], rel=1e-4, abs=1e-7), key
    for (name, a), b in zip(whole.named_parameters(), split.parameters(), strict=True):
        if a.grad is not None:
            assert b.grad is not None
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7, msg=name)


def test_the_reward_model_gradient_is_clipped_to_its_max_grad_norm() -> None:
    cb = Reports()
    rm, _ = train_small(cb, epochs=0.1, max_grad_norm=1e-4)
    grads = torch.cat([p.grad.flatten() for p in rm.parameters() if p.grad is not None])
    assert cb.values[0]["grad_norm"] > 1e-3
    assert float(grads.norm()) == pytest.approx(1e-4, rel=1e-4)
