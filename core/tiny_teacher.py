"""The demo's tiny arithmetic teacher: trained on gold worked solutions, a stand-in for a large teacher."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from core.records import Callbacks, NullCallbacks

#: Bump to invalidate cached tiny teachers when their recipe changes.
TEACHER_RECIPE = {
    "version": 3,
    "preset": "tiny-teacher",
    "examples": 41600,
    "epochs": 1.0,
    "lr": 4e-3,
    "batch_size": 64,
    "seed": 0,
}


def train_tiny_teacher(
    out_dir: Path, *, recipe: dict[str, Any] | None = None, callbacks: Callbacks | None = None
) -> dict[str, Any]:
    """Train the demo's tiny arithmetic teacher on gold worked solutions and save it (HF format) to ``out_dir``.

    This is the stand-in for a large teacher: the method never sees these gold solutions again.
    """
    from core.configs import SFTConfig
    from core.models import build_tiny, count_parameters, save_hf
    from core.sft import train_causal_lm
    from core.tasks import arithmetic

    r = {**TEACHER_RECIPE, **(recipe or {})}
    items = arithmetic.load("train", size=r["examples"], seed=1000 + r["seed"])  # disjoint from job seeds
    model, tok = build_tiny(r["preset"], seed=r["seed"])
    cfg = SFTConfig(
        epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], warmup_steps=30, max_length=128
    )
    summary = train_causal_lm(
        model,
        tok,
        [arithmetic.build_prompt(i) for i in items],
        [" " + (i.solution or "") for i in items],
        cfg=cfg,
        callbacks=callbacks or NullCallbacks(),
        stage="teacher_training",
        seed=r["seed"],
    )
    save_hf(model, tok, out_dir)
    meta = {"recipe": r, "parameters": count_parameters(model), **summary}
    (Path(out_dir) / "twofold_teacher.json").write_text(json.dumps(meta, indent=2))
    return meta


def ensure_tiny_teacher(
    cache_dir: Path, *, recipe: dict[str, Any] | None = None, callbacks: Callbacks | None = None
) -> Path:
    """A trained tiny teacher under ``cache_dir`` (trained once per recipe, then reused)."""
    r = {**TEACHER_RECIPE, **(recipe or {})}
    key = "-".join(f"{k}{r[k]}" for k in sorted(r))
    out = Path(cache_dir) / f"tiny-teacher-{_digest(key)}"
    if (out / "twofold_teacher.json").exists() and (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    train_tiny_teacher(tmp, recipe=r, callbacks=callbacks)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
