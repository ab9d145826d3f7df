"""The demo's tiny arithmetic teacher: trained on gold worked solutions, a stand-in for a large teacher.

These tiny models learn the task through a sharp transition (near 0% to 80% within a few hundred steps), and
where it happens differs from CPU to CPU (float rounding differs between instruction sets), so a fixed number of
steps gives a 30% teacher on one machine and a 75% one on another. The teacher is therefore trained until its
greedy accuracy on its own validation problems (gold, from the teacher's seed range, never a job's data) reaches
``target_accuracy``, checked every ``check_every`` steps from ``check_from`` on, within at most ``examples``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from twofold.core.records import Callbacks, NullCallbacks

#: A cached teacher is reused only when it was trained with exactly this recipe; bump ``version`` when the training
#: code changes what a recipe produces.
TEACHER_RECIPE: dict[str, Any] = {
    "version": 4,
    "preset": "tiny-teacher",
    "examples": 76800,  # at most 1,200 steps; the LR schedule is planned for all of them
    "epochs": 1.0,
    "lr": 4e-3,
    "batch_size": 64,
    "seed": 0,
    "target_accuracy": 0.75,  # None: train for all the examples
    "check_from": 400,
    "check_every": 25,
    "check_size": 300,
}


def train_tiny_teacher(
    out_dir: Path, *, recipe: dict[str, Any] | None = None, callbacks: Callbacks | None = None
) -> dict[str, Any]:
    """Train the demo's tiny arithmetic teacher on gold worked solutions and save it (HF format) to ``out_dir``.

    This is the stand-in for a large teacher: the method never sees these gold solutions again.
    """
    from twofold.core.configs import SFTConfig
    from twofold.core.evaluation import evaluate_model
    from twofold.core.models import build_tiny, count_parameters, save_hf
    from twofold.core.sft import train_causal_lm
    from twofold.core.tasks import arithmetic

    r = {**TEACHER_RECIPE, **(recipe or {})}
    cb = callbacks or NullCallbacks()
    items = arithmetic.load("train", size=r["examples"], seed=1000 + r["seed"])  # disjoint from job seeds
    model, tok = build_tiny(r["preset"], seed=r["seed"])
    cfg = SFTConfig(
        epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], warmup_steps=30, max_length=128
    )
    checks: list[dict[str, float]] = []
    target = r["target_accuracy"]
    val = arithmetic.load("test", size=r["check_size"], seed=1000 + r["seed"]) if target is not None else []

    def reached_target(step: int) -> bool:
        if step < r["check_from"]:
            return False
        acc = evaluate_model(
            model,
            tok,
            val,
            arithmetic,
            model_name="teacher",
            benchmark="arithmetic-val",
            max_new_tokens=56,
            batch_size=len(val),
        ).accuracy
        checks.append({"step": step, "accuracy": round(acc, 4)})
        cb.metrics("teacher_training", step, {"val_accuracy": acc})
        return acc >= target

    summary = train_causal_lm(
        model,
        tok,
        [arithmetic.build_prompt(i) for i in items],
        [" " + (i.solution or "") for i in items],
        cfg=cfg,
        callbacks=cb,
        stage="teacher_training",
        seed=r["seed"],
        stop_when=reached_target if target is not None else None,
        stop_check_every=r["check_every"],
    )
    save_hf(model, tok, out_dir)
    meta = {"recipe": r, "parameters": count_parameters(model), "checks": checks, **summary}
    (Path(out_dir) / "twofold_teacher.json").write_text(json.dumps(meta, indent=2))
    return meta


def is_current(teacher_dir: Path, *, recipe: dict[str, Any] | None = None) -> bool:
    """Whether ``teacher_dir`` holds a teacher trained with this recipe (a cache from an older one is not)."""
    meta_path = Path(teacher_dir) / "twofold_teacher.json"
    if not meta_path.exists() or not (Path(teacher_dir) / "config.json").exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("recipe") == {**TEACHER_RECIPE, **(recipe or {})}


def ensure_tiny_teacher(
    cache_dir: Path, *, recipe: dict[str, Any] | None = None, callbacks: Callbacks | None = None
) -> Path:
    """A trained tiny teacher under ``cache_dir`` (trained once per recipe, then reused)."""
    r = {**TEACHER_RECIPE, **(recipe or {})}
    key = "-".join(f"{k}{r[k]}" for k in sorted(r))
    out = Path(cache_dir) / f"tiny-teacher-{_digest(key)}"
    if is_current(out, recipe=r):
        return out
    tmp = out.with_name(out.name + ".tmp")
    train_tiny_teacher(tmp, recipe=r, callbacks=callbacks)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
