"""What PPO and GRPO share: sampling a rollout batch, completion log-probabilities, the data cursor, resumable
state on disk, and the outer loop (cancel check, rollout, reward, update, metrics, progress, checkpoints).

A trainer (``ppo.py``, ``grpo.py``) builds its models and optimisers and hands :func:`run_rl` an ``update``
function: ``update(rollout, scores, generator) -> metrics``, where ``scores`` are the (B,) sequence rewards
already multiplied by ``cfg.reward_scale``. Everything else happens here once.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from twofold.core.configs import RLConfig
from twofold.core.models import generate
from twofold.core.records import Callbacks, Cancelled
from twofold.core.rl.algos import (
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
)
from twofold.core.tasks import Item

#: ``reward_fn(items_per_response, completions) -> rewards``: one float per completion.
RewardFn = Callable[[list[Item], list[str]], list[float]]
BuildPrompt = Callable[[Item], str]

STATE_FILE = "state.pt"


@dataclass
class Rollout:
    """One rollout batch: ``B = prompts * samples_per_prompt`` responses, each prompt's samples consecutive.

    Attributes:
        items: B items, the question each response answers.
        texts: B decoded completions.
        sequences: (B, P + T) left-padded prompt + completion ids (pad after eos).
        attention_mask: (B, P + T) 1 on real prompt and completion tokens.
        completion_mask: (B, T) float, 1.0 on completion tokens up to and including eos.
        prompt_len: P.
        logprobs: (B, T) policy log-probabilities of the sampled tokens at sampling time.
        ref_logprobs: (B, T) the same under the frozen reference.
        entropy: (B, T) policy entropy at each completion position.
    """

    items: list[Item]
    texts: list[str]
    sequences: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_len: int
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    entropy: torch.Tensor

    @property
    def size(self) -> int:
        """B, the number of responses."""
        return self.sequences.shape[0]


def model_inputs(sequences: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward kwargs for left-padded ``sequences`` (B, L): positions count real tokens only, so a left-padded
    row sees the same positions it saw during generation."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
    return {"input_ids": sequences, "attention_mask": attention_mask, "position_ids": position_ids}


def completion_logprobs(
    model: PreTrainedModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the completion tokens under ``model`` (policy or reference), and optionally the
    entropy at each completion position.

    Logits are divided by ``temperature`` so they describe the distribution the rollout was sampled from.
    Only the last ``T + 1`` positions go through the LM head (``logits_to_keep``).

    Args:
        sequences, attention_mask: (B, P + T); prompt_len: P.
    Returns:
        logprobs (B, T) and entropy (B, T) or None.
    """
    steps = sequences.shape[1] - prompt_len
    out = model(**model_inputs(sequences, attention_mask), logits_to_keep=steps + 1, use_cache=False)
    logits = out.logits[:, :-1].float() / temperature  # (B, T, V): position P-1+t predicts token P+t
    logprobs = logprobs_from_logits(logits, sequences[:, prompt_len:])
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logprobs, entropy


def frozen_reference(policy: PreTrainedModel, ref_policy: PreTrainedModel | None) -> PreTrainedModel:
    """The KL reference: ``ref_policy``, or a copy of ``policy`` as given (before any resumed weights load);
    put in eval mode with gradients off."""
    ref = ref_policy if ref_policy is not None else copy.deepcopy(policy)
    ref.eval()
    ref.requires_grad_(False)
    return ref


@torch.no_grad()
def rollout(
    policy: PreTrainedModel,
    ref_policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[Item],
    build_prompt: BuildPrompt,
    *,
    samples_per_prompt: int,
    temperature: float,
    max_new_tokens: int,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample ``samples_per_prompt`` completions per item with :func:`core.models.generate`, then score the
    sampled tokens under the policy (old log-probabilities, entropy) and the reference."""
    expanded = [item for item in items for _ in range(samples_per_prompt)]
    was_training = policy.training
    policy.eval()
    gen = generate(
        policy,
        tokenizer,
        [build_prompt(item) for item in expanded],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        generator=generator,
    )
    attention_mask = gen.attention_mask
    logprobs, entropy = completion_logprobs(
        policy, gen.sequences, attention_mask, gen.prompt_len, temperature=temperature, with_entropy=True
    )
    ref_logprobs, _ = completion_logprobs(
        ref_policy, gen.sequences, attention_mask, gen.prompt_len, temperature=temperature
    )
    policy.train(was_training)
    assert entropy is not None
    return Rollout(
        items=expanded,
        texts=gen.texts,
        sequences=gen.sequences,
        attention_mask=attention_mask,
        completion_mask=gen.completion_mask.float(),
        prompt_len=gen.prompt_len,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        entropy=entropy,
    )


def minibatches(size: int, mini_batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index tensors of ``mini_batch_size`` covering ``range(size)`` once (the last may be smaller)."""
    order = torch.randperm(size, generator=generator, device=generator.device).cpu()
    yield from order.split(mini_batch_size)


def clip_and_step(
    loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float
) -> float:
    """Backward ``loss``, clip ``model``'s gradient norm, step ``optimizer``; returns the pre-clip norm."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return float(norm)


class DataCursor:
    """A seeded, shuffled walk over ``n`` item indices, reshuffled each epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so the state is just ``(epoch, position)``.
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("items: no training questions to draw prompts from")
        self.n, self.seed, self.epoch, self.pos = n, seed, 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(f"rl-cursor-{self.seed}-{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices, crossing into freshly shuffled epochs as needed."""
        out: list[int] = []
        while len(out) < k:
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            grab = min(k - len(out), self.n - self.pos)
            out.extend(self._order[self.pos : self.pos + grab])
            self.pos += grab
        return out

    def state_dict(self) -> dict[str, int]:
        """Plain-data state: ``n``, ``seed``, ``epoch``, ``pos``."""
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved state; the item count must match the saved run's."""
        if state["n"] != self.n:
            raise ValueError(
                f"items: the saved RL state walked {state['n']} questions but {self.n} were given; "
                "resume with the same training items or clear the state directory"
            )
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._order = self._shuffled(self.epoch)


def save_state(state_dir: Path, step: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``state_dir/step-NNNNNNNN/state.pt`` atomically (temp dir, fsync, rename), then
    delete older step directories. Returns the new directory."""
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_dir / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=state_dir))
    with open(tmp / STATE_FILE, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in state_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(state_dir: Path, device: torch.device) -> dict[str, Any] | None:
    """The newest complete state in ``state_dir`` (None if there is none); leftover temp dirs are removed."""
    if not state_dir.is_dir():
        return None
    for tmp in state_dir.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for candidate in sorted(state_dir.glob("step-*"), reverse=True):
        if (candidate / STATE_FILE).is_file():
            state: dict[str, Any] = torch.load(candidate / STATE_FILE, map_location=device, weights_only=True)
            return state
    return None


def run_rl(
    *,
    algo: str,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ref_policy: PreTrainedModel,
    items: Sequence[Item],
    build_prompt: BuildPrompt,
    reward_fn: RewardFn,
    cfg: RLConfig,
    callbacks: Callbacks,
    stage: str,
    state_dir: str | os.PathLike[str] | None,
    seed: int,
    update: Callable[[Rollout, torch.Tensor, torch.Generator], dict[str, float]],
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    evaluate: Callable[[int], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """The outer RL loop shared by PPO and GRPO; see the module docstring. Resumes from ``state_dir`` when it
    holds a state (``modules`` and ``optimizers`` are saved and restored by name). Returns the summary."""
    device = next(policy.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)  # sampling and mini-batch order
    cursor = DataCursor(len(items), seed)
    history: dict[str, list[float]] = {"reward": [], "kl": []}
    state_path = Path(state_dir) if state_dir is not None else None
    start = 0
    saved = load_state(state_path, device) if state_path is not None else None
    if saved is not None:
        start = _restore(saved, algo, cfg, modules, optimizers, generator, cursor, history, callbacks, stage)

    last_saved = start

    def checkpoint(step: int) -> None:
        nonlocal last_saved
        assert state_path is not None
        payload = {
            "algo": algo,
            "step": step,
            "config": dataclasses.asdict(cfg),
            "modules": {name: m.state_dict() for name, m in modules.items()},
            "optimizers": {name: o.state_dict() for name, o in optimizers.items()},
            "rng": {
                "python": random.getstate(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "sampler": generator.get_state(),
            },
            "cursor": cursor.state_dict(),
            "history": history,
        }
        save_state(state_path, step, payload)
        last_saved = step

    if cfg.eval_every and evaluate is None:
        callbacks.event(
            stage, "warning", "no_evaluator", "rl.eval_every is set but no evaluate function was given"
        )
    was_training = policy.training
    started = time.monotonic()
    for step in range(start, cfg.steps):
        if callbacks.should_stop():
            if state_path is not None and step > last_saved:
                checkpoint(step)  # so a retried stage resumes here
            raise Cancelled(f"{stage}: cancelled at step {step} of {cfg.steps}")
        tick = time.monotonic()
        batch = rollout(
            policy,
            ref_policy,
            tokenizer,
            [items[i] for i in cursor.take(cfg.prompts_per_batch)],
            build_prompt,
            samples_per_prompt=cfg.samples_per_prompt,
            temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens,
            generator=generator,
        )
        raw = _check_rewards(reward_fn(batch.items, batch.texts), batch.size)
        scores = torch.tensor(raw, dtype=torch.float32, device=device) * cfg.reward_scale  # (B,)
        policy.train()
        stats = update(batch, scores, generator)
        mask = batch.completion_mask
        kl = masked_sum(kl_penalty(batch.logprobs, batch.ref_logprobs, "k1"), mask, dim=1).mean()
        values = {
            "reward": sum(raw) / len(raw),
            "kl": float(kl),
            "response_len": float(mask.sum(1).mean()),
            "entropy": float(masked_mean(batch.entropy, mask)),
            **stats,
            "step_seconds": time.monotonic() - tick,
        }
        history["reward"].append(values["reward"])
        history["kl"].append(values["kl"])
        callbacks.metrics(stage, step + 1, values)
        if evaluate is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            callbacks.metrics(stage, step + 1, {f"eval_{k}": v for k, v in evaluate(step + 1).items()})
        callbacks.progress(stage, step + 1, cfg.steps)
        if state_path is not None and cfg.save_every and (step + 1) % cfg.save_every == 0:
            checkpoint(step + 1)
    done = max(start, cfg.steps)
    if state_path is not None and done > last_saved:
        checkpoint(done)
    policy.train(was_training)
    seconds = time.monotonic() - started
    rewards = history["reward"]
    return {
        "algo": algo,
        "steps": done,
        "resumed_from": start,
        "first_reward": rewards[0] if rewards else None,
        "final_reward": rewards[-1] if rewards else None,
        "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        "kl": history["kl"][-1] if history["kl"] else None,
        "seconds": seconds,
        "seconds_per_step": seconds / (done - start) if done > start else None,
    }


def _check_rewards(raw: Sequence[float], expected: int) -> list[float]:
    values = [float(r) for r in raw]
    if len(values) != expected:
        raise ValueError(f"reward_fn: returned {len(values)} rewards for {expected} completions")
    if any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise ValueError("reward_fn: returned a NaN or infinite reward")
    return values


def _restore(
    saved: dict[str, Any],
    algo: str,
    cfg: RLConfig,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    generator: torch.Generator,
    cursor: DataCursor,
    history: dict[str, list[float]],
    callbacks: Callbacks,
    stage: str,
) -> int:
    if saved["algo"] != algo:
        raise ValueError(
            f"rl.algo: the saved state is {saved['algo']!r}, not {algo!r}; clear the state directory"
        )
    for name, module in modules.items():
        module.load_state_dict(saved["modules"][name])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(saved["optimizers"][name])
    rng = saved["rng"]
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
    generator.set_state(rng["sampler"].cpu())
    cursor.load_state_dict(saved["cursor"])
    history.update({k: list(v) for k, v in saved["history"].items()})
    changed = sorted(
        k for k, v in dataclasses.asdict(cfg).items() if k != "steps" and saved["config"].get(k) != v
    )
    step = int(saved["step"])
    callbacks.event(
        stage,
        "warning" if changed else "info",
        "resumed",
        f"resumed at step {step}" + (f"; config changed since: {', '.join(changed)}" if changed else ""),
        {"step": step, "changed": changed},
    )
    return step


def average(stats: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of per-mini-batch metric dicts (all with the same keys)."""
    if not stats:
        return {}
    return {key: sum(s[key] for s in stats) / len(stats) for key in stats[0]}
