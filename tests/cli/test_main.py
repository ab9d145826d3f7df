"""The ``twofold`` command line keeps the terminal to its own lines: no transformers progress bars while a model
is saved and loaded, while transformers' warnings still show, and a user's own setting wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the command line once (``--version``), then saves and loads a tiny model as the stages do.
SCRIPT = """
import sys
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.utils import logging

if sys.argv[1] == "cli":
    from twofold.cli.main import cli
    try:
        cli(["--version"])
    except SystemExit:
        pass
config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=1,
                     num_key_value_heads=1, vocab_size=32)
LlamaForCausalLM(config).save_pretrained(sys.argv[2])
LlamaForCausalLM.from_pretrained(sys.argv[2])
logging.get_logger("transformers").warning("a real warning")
"""


def run(tmp_path: Path, mode: str, **env: str) -> str:
    """Run SCRIPT in a fresh interpreter; returns its stdout and stderr together."""
    clean = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(tmp_path / mode)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.mark.slow
def test_the_command_line_hides_transformers_progress_bars_but_not_its_warnings(tmp_path: Path) -> None:
    plain = run(tmp_path, "plain")
    assert "Writing model shards" in plain and "Loading weights" in plain  # what the bars look like

    quiet = run(tmp_path, "cli")
    assert "Writing model shards" not in quiet and "Loading weights" not in quiet
    assert "a real warning" in quiet

    mine = run(tmp_path / "mine", "cli", HF_HUB_DISABLE_PROGRESS_BARS="0")
    assert "Loading weights" in mine  # the user's own setting is kept
