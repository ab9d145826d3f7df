"""PPO specifics: the critic learns, lines its values up with completion tokens, and leaves the caller's
``critic_init`` untouched. (Learning, cancel and resume for both trainers: ``test_rollout.py``.)"""

from __future__ import annotations

from typing import Any

import torch

from twofold.core.models import build_reward_model
from twofold.core.rl.ppo import build_critic, completion_values


def test_ppo_critic_learns_a_constant_reward_and_leaves_critic_init_alone(toy: Any) -> None:
    model, tok = toy.model()
    reward_model = build_reward_model(model, tok)
    rm_before = toy.params(reward_model)
    cb = toy.Recorder()
    constant = lambda items, texts: [1.0] * len(texts)  # noqa: E731
    toy.train(
        "ppo", cb, constant, (model, tok), steps=10, kl_coef=0.0, value_lr=1e-2, critic_init=reward_model
    )
    losses = cb.series("value_loss")
    # values start at 0 (zero head) against returns of 1, a loss of 0.5 on the first mini-batch; the critic
    # must close nearly all of that gap
    assert losses[0] > 0.1 and losses[-1] < 0.02 * losses[0], losses
    for name, value in reward_model.state_dict().items():
        assert torch.equal(rm_before[name], value), name


def test_critic_values_line_up_with_completion_tokens(toy: Any) -> None:
    model, tok = toy.model()
    critic = build_critic(model, tok)
    torch.nn.init.normal_(critic.score.weight)
    seqs = tok(["<|pad|>Q: 1\nA: 42", "Q: 12\nA: 4<|eos|>"], return_tensors="pt")["input_ids"]
    attn = torch.ones_like(seqs)
    attn[0, 0] = 0
    prompt_len = seqs.shape[1] - 3
    values = completion_values(critic, seqs, attn, prompt_len)
    assert values.shape == (2, 3)
    # value of completion token t is the head on the hidden state that predicts it (position P - 1 + t)
    with torch.no_grad():
        hidden = critic.base_model(input_ids=seqs[1:], attention_mask=attn[1:]).last_hidden_state
        expected = critic.score(hidden[0, prompt_len - 1 : -1]).squeeze(-1)
    torch.testing.assert_close(values[1].detach(), expected, atol=1e-5, rtol=1e-5)
    # the left-padded row sees the same values as when it is scored without its padding
    with torch.no_grad():
        alone = completion_values(critic, seqs[:1, 1:], attn[:1, 1:], prompt_len - 1)
    torch.testing.assert_close(values[0].detach(), alone[0], atol=1e-5, rtol=1e-5)
