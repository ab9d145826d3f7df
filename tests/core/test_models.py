"""Tiny models, the byte-level tokenizer, HF-format checkpoints and the batched sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from twofold.core.models import (
    PRESETS,
    build_reward_model,
    build_tiny,
    build_tokenizer,
    count_parameters,
    generate,
    load_causal_lm,
    model_from_config,
    save_hf,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["Q: Ana has 7 pens, gets 5 more. #### 12", "héllo wörld — ✓ 数学 🙂", " spaces  and\ttabs\n"]


def noisy_micro(seed: int = 0) -> tuple[torch.nn.Module, object]:
    """A micro model with large random weights, so greedy continuations differ from prompt to prompt."""
    model, tok = build_tiny("micro", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval(), tok


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_ascii_and_non_ascii(text: str) -> None:
    tok = build_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte
    assert max(ids) < 256  # no special token inside ordinary text


def test_tokenizer_has_distinct_special_tokens_and_pads_left() -> None:
    tok = build_tokenizer()
    specials = {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}
    assert len(specials) == 3 and min(specials) >= 256 and len(tok) == 259
    batch = tok(["a", "abc"], padding=True, add_special_tokens=False)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1]


def test_presets_have_the_documented_sizes() -> None:
    sizes = {name: count_parameters(build_tiny(name)[0]) for name in PRESETS}
    assert 0.5e6 < sizes["tiny-teacher"] < 0.6e6
    assert 3.5 < sizes["tiny-teacher"] / sizes["tiny-student"] < 4.5  # the student is about 4x smaller
    assert sizes["micro"] < 25_000
    a, b = build_tiny("micro", seed=5)[0], build_tiny("micro", seed=5)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_save_hf_loads_back_in_transformers_with_identical_logits(tmp_path: Path) -> None:
    model, tok = noisy_micro()
    out = save_hf(model, tok, tmp_path / "ckpt")
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    loaded_tok = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    for text in TEXTS:
        assert (
            loaded_tok(text, add_special_tokens=False)["input_ids"]
            == tok(text, add_special_tokens=False)["input_ids"]
        )
    ids = torch.tensor([tok(TEXTS[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    # the project's own loader gives the same model, with left padding set
    again, again_tok = load_causal_lm(out)
    assert again_tok.padding_side == "left" and again_tok.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, loaded(input_ids=ids).logits)
    from_cfg, _ = model_from_config(None, str(out))
    assert count_parameters(from_cfg) == count_parameters(model)


def test_loading_a_folder_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_causal_lm(tmp_path)


def test_greedy_batch_with_left_padding_matches_each_prompt_alone() -> None:
    model, tok = noisy_micro(seed=1)
    prompts = ["Q:", "Q: 1+1\nA:", "Q: a much longer prompt, 12*3 and more\nA:", "héllo ✓"]
    batch = generate(model, tok, prompts, max_new_tokens=16)
    assert batch.sequences.shape[0] == len(prompts)
    assert len(set(batch.texts)) > 1  # a constant output would make the comparison vacuous
    for i, prompt in enumerate(prompts):
        alone = generate(model, tok, [prompt], max_new_tokens=16)
        assert batch.texts[i] == alone.texts[0], prompt
        assert (
            batch.sequences[i, batch.prompt_len :].tolist() == alone.sequences[0, alone.prompt_len :].tolist()
        )
    n_prompt = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert batch.prompt_mask.sum(1).tolist() == n_prompt
    assert batch.attention_mask.shape == batch.sequences.shape


def test_sampling_is_reproducible_with_a_generator_and_stop_strings_cut() -> None:
    model, tok = noisy_micro(seed=2)
    prompts = ["Q: 3*3\nA:"] * 4
    a = generate(
        model, tok, prompts, max_new_tokens=16, temperature=1.0, generator=torch.Generator().manual_seed(7)
    )
    b = generate(
        model, tok, prompts, max_new_tokens=16, temperature=1.0, generator=torch.Generator().manual_seed(7)
    )
    assert a.texts == b.texts
    assert len(set(a.texts)) > 1  # rows sample independently
    greedy = generate(model, tok, prompts[:1], max_new_tokens=16).texts[0]
    stop = greedy[3:5]
    cut = generate(model, tok, prompts[:1], max_new_tokens=16, stop=[stop])
    assert cut.texts[0] == greedy[: greedy.find(stop)]
    assert cut.finished == [True]


def test_reward_model_saves_and_loads_as_sequence_classification(tmp_path: Path) -> None:
    base, tok = noisy_micro(seed=3)
    rm = build_reward_model(base, tok).eval()
    # the trunk is copied from the base and the score head starts at zero
    assert torch.equal(rm.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert rm.score.weight.shape[0] == 1 and float(rm.score.weight.detach().abs().sum()) == 0.0
    with torch.no_grad():
        rm.score.weight.normal_()
    out = save_hf(rm, tok, tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(str(out), local_files_only=True).eval()
    assert loaded.config.num_labels == 1 and loaded.config.pad_token_id == tok.pad_token_id
    enc = tok(
        ["Q: 1+1\nA: 2", "Q: longer question here\nA: 5"],
        padding=True,
        add_special_tokens=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        ours, theirs = rm(**enc).logits, loaded(**enc).logits
    assert ours.shape == (2, 1) and torch.equal(ours, theirs)
    assert not torch.equal(ours[0], ours[1])
    # a reward model can also start from a checkpoint path
    save_hf(base, tok, tmp_path / "base")
    from_path = build_reward_model(tmp_path / "base", tok)
    assert torch.equal(from_path.model.embed_tokens.weight, base.model.embed_tokens.weight)
