"""Exact values for ``core.rl.algos``, each checked against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from twofold.core.rl import algos

T = torch.tensor


def close(actual: torch.Tensor, expected: object) -> None:
    """Compare with a float32-sized tolerance."""
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-6)


def test_logprobs_from_logits() -> None:
    # logits (0, ln 3) -> probabilities (1/4, 3/4); labels pick token 1 then token 0
    logits = T([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])  # (1, 2, 2)
    close(algos.logprobs_from_logits(logits, T([[1, 0]])), [[math.log(0.75), math.log(0.25)]])


def test_entropy_from_logits() -> None:
    # uniform over 4 tokens: ln 4; (0, ln 3): -(1/4 ln 1/4 + 3/4 ln 3/4)
    logits = T([[[1.0, 1.0, 1.0, 1.0], [0.0, math.log(3.0), -math.inf, -math.inf]]])
    close(algos.entropy_from_logits(logits[:, :1]), [[math.log(4.0)]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(algos.entropy_from_logits(logits[:, 1:, :2]), [[h]])


def test_masked_mean_and_var() -> None:
    x = T([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    close(algos.masked_mean(x, mask), 7.0 / 3.0)  # (1 + 2 + 4) / 3
    close(algos.masked_mean(x, mask, dim=1), [1.5, 4.0])
    close(algos.masked_mean(x, torch.zeros_like(mask), dim=1), [0.0, 0.0])  # empty rows give 0, not NaN
    # values 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2 -> 7/3
    close(algos.masked_var(x, mask), 7.0 / 3.0)


def test_masked_whiten() -> None:
    # real values 1, 2, 3: mean 2, unbiased variance (1 + 0 + 1) / 2 = 1; the masked 100 is ignored and zeroed
    x = T([1.0, 2.0, 3.0, 100.0])
    mask = T([1.0, 1.0, 1.0, 0.0])
    close(algos.masked_whiten(x, mask), [-1.0, 0.0, 1.0, 0.0])
    close(algos.masked_whiten(x, mask, shift_mean=False), [1.0, 2.0, 3.0, 0.0])


def test_kl_penalty_estimators() -> None:
    # policy p = 1/2, reference q = 1/4: d = ln(q/p) = -ln 2
    logp, ref = T([[math.log(0.5)]]), T([[math.log(0.25)]])
    ln2 = math.log(2.0)
    close(algos.kl_penalty(logp, ref, "k1"), [[ln2]])  # -d
    close(algos.kl_penalty(logp, ref, "k2"), [[0.5 * ln2**2]])  # d^2 / 2
    close(algos.kl_penalty(logp, ref, "k3"), [[0.5 + ln2 - 1.0]])  # e^d - d - 1 = 1/2 + ln 2 - 1
    close(algos.kl_penalty(logp, logp, "k3"), [[0.0]])
    with pytest.raises(ValueError, match="kind"):
        algos.kl_penalty(logp, ref, "k9")  # type: ignore[arg-type]


def test_token_rewards_put_the_score_on_the_last_real_token() -> None:
    scores = T([1.0, -2.0])
    kl = T([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # kl_coef 0.5: row 0 -> (-0.05, -0.10, -0.15 + 1); row 1 -> (-0.20, -0.25 - 2, 0 (padding))
    close(algos.token_rewards(scores, kl, mask, 0.5), [[-0.05, -0.1, 0.85], [-0.2, -2.25, 0.0]])
    # an empty completion gets nothing rather than a score on a padding position
    close(algos.token_rewards(T([3.0]), T([[0.0, 0.0]]), T([[0.0, 0.0]]), 0.5), [[0.0, 0.0]])


def test_gae_by_hand() -> None:
    # gamma = 1, lam = 0.5. Row 0: r = (0, 0, 1), V = (0.5, 0.25, 0.75), all real.
    #   t=2: delta = 1 + 0 - 0.75 = 0.25                 A2 = 0.25
    #   t=1: delta = 0 + 0.75 - 0.25 = 0.5               A1 = 0.5 + 0.5 * 0.25 = 0.625
    #   t=0: delta = 0 + 0.25 - 0.5 = -0.25              A0 = -0.25 + 0.5 * 0.625 = 0.0625
    #   returns = A + V = (0.5625, 0.875, 1.0)
    # Row 1: r = (0, 1, 9), V = (0.5, 0.25, 9), mask (1, 1, 0): the episode ends after t=1, the 9s are padding.
    #   t=1: delta = 1 + 0 - 0.25 = 0.75                 A1 = 0.75
    #   t=0: delta = 0 + 0.25 - 0.5 = -0.25              A0 = -0.25 + 0.5 * 0.75 = 0.125
    #   returns = (0.625, 1.0, 0)
    rewards = T([[0.0, 0.0, 1.0], [0.0, 1.0, 9.0]])
    values = T([[0.5, 0.25, 0.75], [0.5, 0.25, 9.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = algos.gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    close(adv, [[0.0625, 0.625, 0.25], [0.125, 0.75, 0.0]])
    close(ret, [[0.5625, 0.875, 1.0], [0.625, 1.0, 0.0]])


def test_gae_discounts() -> None:
    # gamma = 0.5, lam = 1, V = 0: A1 = 1, A0 = 0 + 0.5 * 0 - 0 + 0.5 * 1 * 1 = 0.5 (discounted return)
    adv, ret = algos.gae_advantages(T([[0.0, 1.0]]), T([[0.0, 0.0]]), T([[1.0, 1.0]]), gamma=0.5, lam=1.0)
    close(adv, [[0.5, 1.0]])
    close(ret, [[0.5, 1.0]])


def test_policy_loss_clips_only_the_favourable_side() -> None:
    # clip 0.2. ratio, advantage -> (-A r, -A clip(r)) -> max, clipped?
    #   1.5, +1 -> (-1.5, -1.2) -> -1.2 yes
    #   0.5, -1 -> ( 0.5,  0.8) ->  0.8 yes
    #   1.1, +2 -> (-2.2, -2.2) -> -2.2 no
    #   0.5, +1 -> (-0.5, -0.8) -> -0.5 no (a worse action is never clipped in its favour)
    # loss = (-1.2 + 0.8 - 2.2 - 0.5) / 4 = -0.775; clip fraction 2/4
    old = T([[0.0, 0.0, 0.0, 0.0]])
    logp = T([[math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.5)]], requires_grad=True)
    adv = T([[1.0, -1.0, 2.0, 1.0]])
    loss, clipfrac = algos.policy_loss(logp, old, adv, torch.ones(1, 4), 0.2)
    close(loss.detach(), -0.775)
    close(clipfrac, 0.5)
    # gradient: clipped tokens get none; others -A r / 4 -> (0, 0, -2 * 1.1 / 4, -1 * 0.5 / 4)
    loss.backward()
    assert logp.grad is not None
    close(logp.grad, [[0.0, 0.0, -0.55, -0.125]])
    # masking the last token out: (-1.2 + 0.8 - 2.2) / 3, clip fraction 2/3
    loss, clipfrac = algos.policy_loss(logp.detach(), old, adv, T([[1.0, 1.0, 1.0, 0.0]]), 0.2)
    close(loss, -2.6 / 3.0)
    close(clipfrac, 2.0 / 3.0)


def test_value_loss_is_clipped() -> None:
    # clip 0.2; V, V_old, R -> V_clip, (V - R)^2, (V_clip - R)^2 -> max
    #   1.0, 0.5, 2.0 -> 0.7, 1.00, 1.69 -> 1.69 (clipped term larger)
    #   0.0, 0.5, 0.0 -> 0.3, 0.00, 0.09 -> 0.09 (clipped term larger)
    #   0.6, 0.5, 1.0 -> 0.6, 0.16, 0.16 -> 0.16
    # loss = 0.5 * (1.69 + 0.09 + 0.16) / 3; clip fraction 2/3
    loss, clipfrac = algos.value_loss(
        T([[1.0, 0.0, 0.6]]), T([[0.5, 0.5, 0.5]]), T([[2.0, 0.0, 1.0]]), torch.ones(1, 3), 0.2
    )
    close(loss, 0.5 * 1.94 / 3.0)
    close(clipfrac, 2.0 / 3.0)


def test_group_advantages() -> None:
    # group (1, 0, 0, 1): mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3) -> +-0.5 / (sqrt(1/3) + eps)
    # group (2, 2, 2, 2): std 0 -> all 0
    adv = algos.group_advantages(T([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), 4)
    a = 0.5 / (math.sqrt(1.0 / 3.0) + 1e-4)
    close(adv, [a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="group_size"):
        algos.group_advantages(T([1.0, 2.0, 3.0]), 2)


def test_last_token_index() -> None:
    close(
        algos.last_token_index(T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])).float(),
        [1.0, 2.0, 0.0],
    )
