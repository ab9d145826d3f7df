"""Speed benchmarks for the hot paths, on tiny models (``make bench``).

Prints a table and writes ``bench/results.json``. Goals (2-core CPU, tiny presets) are checked here, never in
timed tests: generation >= 1,500 tokens/s for the teacher at batch 256; SFT step <= 0.5 s; PPO step <= 1.5 s;
teacher server >= 50 samples/s over HTTP.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from twofold.core.configs import RLConfig, SFTConfig, TeacherConfig
from twofold.core.models import build_tiny, generate, save_hf
from twofold.core.records import NullCallbacks
from twofold.core.rl.grpo import train_grpo
from twofold.core.rl.ppo import train_ppo
from twofold.core.sft import train_causal_lm
from twofold.core.tasks import arithmetic
from twofold.core.teacher import sample_sync

GOALS = {"generate_tokens_per_s": 1500, "sft_step_s": 0.5, "ppo_step_s": 1.5, "server_samples_per_s": 50}


def bench_generate(items: list[Any]) -> dict[str, float]:
    """Sampled tokens per second of the tiny teacher at batch 256, 40 new tokens."""
    model, tok = build_tiny("tiny-teacher")
    model.eval()
    prompts = [arithmetic.build_prompt(it) for it in items[:256]]
    generate(model, tok, prompts[:8], max_new_tokens=4, temperature=1.0)  # warm-up
    t = time.perf_counter()
    out = generate(model, tok, prompts, max_new_tokens=40, temperature=1.0)
    dt = time.perf_counter() - t
    return {"generate_tokens_per_s": float(out.completion_mask.sum()) / dt}


def bench_sft(items: list[Any]) -> dict[str, float]:
    """Seconds per SFT step, tiny-teacher, batch 64."""
    model, tok = build_tiny("tiny-teacher")
    cfg = SFTConfig(epochs=1, batch_size=64, warmup_steps=1)
    data = items[: 64 * 10]
    t = time.perf_counter()
    s = train_causal_lm(
        model,
        tok,
        [arithmetic.build_prompt(i) for i in data],
        [" " + (i.solution or "") for i in data],
        cfg=cfg,
        callbacks=NullCallbacks(),
    )
    return {"sft_step_s": (time.perf_counter() - t) / s["steps"]}


def bench_rl(items: list[Any]) -> dict[str, float]:
    """Seconds per PPO and GRPO step, tiny-student, batch 64, 40 new tokens."""
    out: dict[str, float] = {}
    for algo, trainer, spp in (("ppo", train_ppo, 1), ("grpo", train_grpo, 8)):
        policy, tok = build_tiny("tiny-student")
        cfg = RLConfig(
            algo=algo,
            steps=4,
            batch_size=64,
            samples_per_prompt=spp,
            mini_batch_size=64,
            ppo_epochs=1,
            max_new_tokens=40,
        )
        s = trainer(
            policy,
            tok,
            ref_policy=None,
            items=items,
            build_prompt=arithmetic.build_prompt,
            reward_fn=lambda its, texts: [float("7" in t) for t in texts],
            cfg=cfg,
            callbacks=NullCallbacks(),
        )
        out[f"{algo}_step_s"] = s["seconds_per_step"]
    return out


def bench_server(items: list[Any]) -> dict[str, float]:
    """Teacher samples per second through the built-in server over HTTP (tiny-teacher, 40 tokens)."""
    from twofold.teacher_server.process import start

    model, tok = build_tiny("tiny-teacher")
    with tempfile.TemporaryDirectory() as d:
        save_hf(model, tok, Path(d) / "teacher")
        with start(Path(d) / "teacher", name="bench", threads=0) as server:
            cfg = TeacherConfig(
                base_url=server.url,
                model="bench",
                temperatures=(0.6, 1.0),
                n=4,
                max_tokens=40,
                prompts_per_request=64,
                concurrency=2,
            )
            t = time.perf_counter()
            usage = sample_sync(
                cfg,
                items[:128],
                build_prompt=arithmetic.build_prompt,
                extract_answer=arithmetic.extract_answer,
                sink=lambda batch: None,
            )
            dt = time.perf_counter() - t
    return {"server_samples_per_s": usage.samples / dt}


def main() -> None:
    """Run every benchmark and print a table against the goals."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    items = arithmetic.load("train", size=1000, seed=7)
    results: dict[str, float] = {}
    for fn in (bench_generate, bench_sft, bench_rl, bench_server):
        results.update(fn(items))
    print(f"{'benchmark':<24}{'value':>10}{'goal':>10}  ok")
    for k, v in results.items():
        goal = GOALS.get(k)
        ok = "" if goal is None else ("yes" if (v >= goal if k.endswith("per_s") else v <= goal) else "NO")
        print(f"{k:<24}{v:>10.2f}{'' if goal is None else goal:>10}  {ok}")
    meta = {"machine": platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    args.out.write_text(json.dumps({"meta": meta, "results": results, "goals": GOALS}, indent=2))


if __name__ == "__main__":
    main()
