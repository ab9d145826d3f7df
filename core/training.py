"""The one training loop that SFT, the reward model and RL share, and what it stands on.

- :class:`Learner`: a model, its optimiser and its gradient clip. :meth:`Learner.step` is the only place where a
  backward pass and an optimiser step happen: one backward per micro-batch (gradient accumulation), then clipping,
  then the step.
- :class:`TrainLoop`: the step counter, cancellation (checked before every step), metrics and progress, the save
  cadence, and the one resume format: a single dict (every learner's weights and optimiser, the step, RNG states,
  the data cursor, the resolved config and a stage's extra state) written atomically by :func:`save_state` and
  read back with ``weights_only=True`` by :func:`load_state`.
- :class:`DataCursor`: seeded epochs over the data, resumable from ``(epoch, position)``.
- Tokenising (prompt, completion) pairs, batching, the LR schedule.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase

from twofold.core.records import Callbacks, Cancelled

STATE_FILE = "state.pt"
#: Bumped when the layout of the state dict changes; a state of another format is not resumed.
STATE_FORMAT = 1

M = TypeVar("M")
#: ``loss_fn(micro_batch) -> (loss, metrics)``: the loss already scaled to the micro-batch's share of the batch,
#: so that the accumulated gradient is the whole batch's, and metrics scaled the same way (they are summed).
LossFn = Callable[[M], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Encoded:
    """Token ids of ``prompt + completion (+ eos)``; the first ``prompt_len`` ids are the prompt."""

    ids: list[int]
    prompt_len: int


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    completions: list[str],
    *,
    max_length: int,
    add_eos: bool = True,
) -> list[Encoded]:
    """Tokenise each pair without special tokens; truncate from the right to ``max_length``."""
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    out = []
    for p, c in zip(p_ids, c_ids, strict=True):
        ids = p + c + ([tokenizer.eos_token_id] if add_eos else [])
        out.append(Encoded(ids[:max_length], min(len(p), max_length)))
    return out


def collate(
    batch: list[Encoded], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch. Returns input_ids (B, L), attention_mask (B, L) and labels (B, L) where prompt and
    padding positions are -100, so the loss covers the completion only."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        labels[i, e.prompt_len : n] = ids[i, e.prompt_len : n]
    return ids.to(device), mask.to(device), labels.to(device)


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Linear warm-up to ``peak`` then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def split_evenly(seq: Sequence[M], parts: int) -> list[list[M]]:
    """``seq`` cut into ``min(parts, len(seq))`` consecutive runs whose lengths differ by at most one."""
    parts = max(1, min(parts, len(seq)))
    size, extra = divmod(len(seq), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(seq[start:end]))
        start = end
    return out


def pack(order: Iterable[int], limit: int, size: Callable[[int], int] | None = None) -> Iterator[list[int]]:
    """Consecutive runs of ``order`` whose total ``size`` (1 per index by default) first reaches ``limit``; the
    last run may fall short."""
    run: list[int] = []
    total = 0
    for i in order:
        run.append(i)
        total += size(i) if size is not None else 1
        if total >= limit:
            yield run
            run, total = [], 0
    if run:
        yield run


@runtime_checkable
class Stateful(Protocol):
    """Anything whose state a checkpoint carries: ``state_dict`` returns plain data and tensors only (what
    ``torch.load(weights_only=True)`` reads back)."""

    def state_dict(self) -> dict[str, Any]:
        """The state to save."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state."""


class DataCursor:
    """A seeded walk over ``n`` item indices in epochs, each a fresh shuffle.

    The order of epoch ``e`` depends only on ``(prefix, seed, e)``, so the state is just ``(epoch, position)``.
    :meth:`take` crosses into the next epoch in the middle of a batch (RL prompts); :meth:`next_batch` ends a
    batch at the end of an epoch (SFT examples, reward-model questions).
    """

    def __init__(self, n: int, seed: int, *, prefix: str = "") -> None:
        if n < 1:
            raise ValueError("items: no training questions to draw prompts from")
        self.n, self.seed, self.prefix, self.epoch, self.pos = n, seed, prefix, 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(f"{self.prefix}{self.seed}-{epoch}").shuffle(order)
        return order

    def _next_epoch_if_done(self) -> None:
        if self.pos == self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._shuffled(self.epoch)

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices, crossing into freshly shuffled epochs as needed."""
        out: list[int] = []
        while len(out) < k:
            self._next_epoch_if_done()
            grab = min(k - len(out), self.n - self.pos)
            out.extend(self._order[self.pos : self.pos + grab])
            self.pos += grab
        return out

    def next_batch(self, limit: int, size: Callable[[int], int] | None = None) -> list[int]:
        """The next indices of the current epoch until their total ``size`` (1 each by default) reaches
        ``limit`` or the epoch ends; the call after an epoch's last batch starts the next epoch."""
        self._next_epoch_if_done()
        batch = next(pack(self._order[self.pos :], limit, size))
        self.pos += len(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: ``n``, ``seed``, ``epoch``, ``pos``."""
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; the item count must match the saved run's."""
        if state["n"] != self.n:
            raise ValueError(
                f"items: the saved state walked {state['n']} items but {self.n} were given; "
                "resume with the same training data or clear the state directory"
            )
        self.seed, self.epoch, self.pos = state["seed"], state["epoch"], state["pos"]
        self._order = self._shuffled(self.epoch)


class RunningStats:
    """First, last, exponential moving average (weight 0.9 on the past), sum and count of some metrics; a
    stage's summary reads them, and they resume with the run."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.ema: dict[str, float] = {}
        self.sum = {k: 0.0 for k in self.keys}
        self.count = 0

    def update(self, values: dict[str, float]) -> None:
        """Fold in one step's values of the tracked keys."""
        for k in self.keys:
            v = values[k]
            self.first.setdefault(k, v)
            self.last[k] = v
            self.ema[k] = v if k not in self.ema else 0.9 * self.ema[k] + 0.1 * v
            self.sum[k] += v
        self.count += 1

    def mean(self, key: str) -> float | None:
        """The mean of ``key`` over every step so far (None before the first)."""
        return self.sum[key] / self.count if self.count else None

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state."""
        return {
            "first": dict(self.first),
            "last": dict(self.last),
            "ema": dict(self.ema),
            "sum": dict(self.sum),
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state."""
        self.first, self.last, self.ema = dict(state["first"]), dict(state["last"]), dict(state["ema"])
        self.sum, self.count = dict(state["sum"]), int(state["count"])


@dataclass
class Learner:
    """A model, its optimiser and the global gradient norm it is clipped to before each step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    max_grad_norm: float

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, micro_batches: Iterable[M], loss_fn: LossFn[M]) -> tuple[dict[str, float], float]:
        """One optimiser step over ``micro_batches`` (see :data:`LossFn`): one forward and backward per
        micro-batch, so only one micro-batch's activations are alive at a time; then the gradient's global
        norm is clipped to ``max_grad_norm`` and the optimiser steps.

        Returns the metrics summed over the micro-batches and the gradient norm before clipping.
        """
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in micro_batches:
            loss, stats = loss_fn(micro)
            loss.backward()
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return totals, float(norm)


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, torch (CPU and CUDA) and the named generators' RNG states, for exact resumption."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` captured (states are read on the CPU, whatever device they came from)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name].cpu())


def save_state(state_dir: Path, step: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``state_dir/step-NNNNNNNN/state.pt`` atomically (temp dir, fsync, rename, fsync of
    the directory), then delete older step directories. Returns the new directory.

    A save that fails or dies half-way leaves the previous state as it was.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_dir / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=state_dir))
    try:
        with open(tmp / STATE_FILE, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(state_dir)
    for old in state_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_state(state_dir: Path | None) -> dict[str, Any] | None:
    """The newest complete state in ``state_dir`` (None if there is none), loaded on the CPU with
    ``weights_only=True``, so a state directory can hold tensors and plain data but never code to run. Leftover
    temp dirs of interrupted saves are removed."""
    if state_dir is None or not state_dir.is_dir():
        return None
    for tmp in state_dir.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for candidate in sorted(state_dir.glob("step-*"), reverse=True):
        if (candidate / STATE_FILE).is_file():
            state: dict[str, Any] = torch.load(candidate / STATE_FILE, map_location="cpu", weights_only=True)
            return state
    return None


def clear_state(state_dir: Path | None) -> None:
    """Remove resume state once a stage has finished and saved its final checkpoint."""
    if state_dir is not None and state_dir.exists():
        shutil.rmtree(state_dir)


@dataclass(frozen=True)
class LoopResult:
    """How a :meth:`TrainLoop.run` ended: the step reached, the step it resumed from, whether ``after_step``
    ended it early, and the seconds it ran (this call only)."""

    steps: int
    resumed_from: int
    stopped_early: bool
    seconds: float


class TrainLoop:
    """The loop every training stage runs: ``step_fn(step)`` does one step's work and returns its metrics; the
    loop counts steps, checks for cancellation before each, reports metrics and progress every ``log_every``
    steps (and at the last), asks ``after_step(step)`` after each step whether to stop early, and saves the
    resume state every ``config.save_every`` steps (0: none on a cadence), at the end, and on cancellation.

    The state is one dict: ``kind`` (what was trained, checked on resume), ``step``, ``stopped_early``,
    ``config`` (the resolved stage config), ``models`` and ``optimizers`` (per learner name), ``rng``,
    ``cursor`` and ``extra`` (each extra object's ``state_dict``). A run that finds a state in ``state_dir``
    restores all of it before its first step, so it continues exactly as an uninterrupted run would.
    """

    def __init__(
        self,
        *,
        stage: str,
        kind: str,
        total_steps: int,
        callbacks: Callbacks,
        config: Any,
        learners: dict[str, Learner],
        state_dir: str | os.PathLike[str] | None,
        cursor: Stateful | None = None,
        generators: dict[str, torch.Generator] | None = None,
        extra: dict[str, Stateful] | None = None,
        log_every: int = 1,
    ) -> None:
        self.stage, self.kind, self.total = stage, kind, total_steps
        self.callbacks, self.config, self.learners = callbacks, config, learners
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.save_every, self.log_every = int(config.save_every), max(1, log_every)
        self.cursor, self.generators, self.extra = cursor, generators or {}, extra or {}
        self.step = 0
        self.stopped_early = False
        self._last_saved = 0

    def state_dict(self) -> dict[str, Any]:
        """The whole resume state (see the class docstring)."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "step": self.step,
            "stopped_early": self.stopped_early,
            "config": dataclasses.asdict(self.config),
            "models": {name: lr.model.state_dict() for name, lr in self.learners.items()},
            "optimizers": {name: lr.optimizer.state_dict() for name, lr in self.learners.items()},
            "rng": rng_state(self.generators),
            "cursor": self.cursor.state_dict() if self.cursor is not None else None,
            "extra": {name: obj.state_dict() for name, obj in self.extra.items()},
        }

    def save(self) -> None:
        """Write the resume state for the current step (a no-op without a ``state_dir``)."""
        if self.state_dir is not None:
            save_state(self.state_dir, self.step, self.state_dict())
            self._last_saved = self.step

    def resume(self) -> int:
        """Restore the newest state in ``state_dir``, if any; returns the step to continue from."""
        saved = load_state(self.state_dir)
        if saved is None:
            return 0
        if saved.get("format") != STATE_FORMAT:
            self.callbacks.event(
                self.stage,
                "warning",
                "state_ignored",
                f"{self.stage}: the resume state in {self.state_dir} has another format; starting afresh",
            )
            return 0
        if saved["kind"] != self.kind:
            raise ValueError(
                f"{self.stage}: the resume state in {self.state_dir} is from {saved['kind']!r} training, not "
                f"{self.kind!r}; clear the state directory to start afresh"
            )
        for name, learner in self.learners.items():
            learner.model.load_state_dict(saved["models"][name])
            learner.optimizer.load_state_dict(saved["optimizers"][name])
        set_rng_state(saved["rng"], self.generators)
        if self.cursor is not None:
            self.cursor.load_state_dict(saved["cursor"])
        for name, obj in self.extra.items():
            obj.load_state_dict(saved["extra"][name])
        self.step = self._last_saved = int(saved["step"])
        self.stopped_early = bool(saved["stopped_early"])
        # a longer run of the same config is a normal continuation; other changes are worth a warning
        changed = sorted(
            k
            for k, v in dataclasses.asdict(self.config).items()
            if k != "steps" and saved["config"].get(k) != v
        )
        self.callbacks.event(
            self.stage,
            "warning" if changed else "info",
            "resumed",
            f"{self.stage} resumed at step {self.step} of {self.total}"
            + (f"; config changed since: {', '.join(changed)}" if changed else ""),
            {"step": self.step, "changed": changed},
        )
        return self.step

    def run(
        self, step_fn: Callable[[int], dict[str, float]], *, after_step: Callable[[int], bool] | None = None
    ) -> LoopResult:
        """Resume if there is a state, then run steps until ``total_steps``, an early stop or cancellation
        (:class:`Cancelled`, after saving the state)."""
        start = self.resume()
        started = time.monotonic()
        while self.step < self.total and not self.stopped_early:
            if self.callbacks.should_stop():  # before every step: a cancel lands within one step
                if self.step > self._last_saved:
                    self.save()  # so a retried stage resumes here
                raise Cancelled(f"{self.stage}: cancelled at step {self.step} of {self.total}")
            values = step_fn(self.step)
            self.step += 1
            if self.step % self.log_every == 0 or self.step == self.total:
                self.callbacks.metrics(self.stage, self.step, values)
                self.callbacks.progress(self.stage, self.step, self.total)
            if after_step is not None and after_step(self.step):
                self.stopped_early = True
                self.callbacks.progress(self.stage, self.step, self.step)
            elif self.save_every and self.step % self.save_every == 0 and self.step < self.total:
                self.save()
        if self.step > self._last_saved:
            self.save()
        return LoopResult(self.step, start, self.stopped_early, time.monotonic() - started)
