"""Build, load and save models; a local byte-level tokenizer; a fast batched sampler.

Nothing here reaches the Hugging Face hub: tiny models are built from a ``LlamaConfig`` and a tokenizer made in
memory; real checkpoints (e.g. Qwen2.5-0.5B-Instruct) are loaded from a local directory by the same code. Every
checkpoint is written in Hugging Face format (safetensors + tokenizer files), so transformers and vLLM load it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"

#: name -> (hidden, layers, heads, intermediate). Parameter counts with the 259-token byte vocabulary.
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny-teacher": (128, 2, 4, 512),  # ~0.56M parameters
    "tiny-student": (64, 2, 4, 256),  # ~0.15M parameters, about 4x smaller
    "micro": (32, 1, 2, 64),  # ~15K parameters, for fast tests
}

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] + '\n' }}"
    "{% elif m['role'] == 'user' %}{{ m['content'] }}{% else %}{{ m['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: one token per byte (so per ASCII character), plus pad/bos/eos."""
    byte_map = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_map))}
    for special in (PAD, BOS, EOS):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, model_max_length=1024
    )
    fast.add_special_tokens({"pad_token": PAD, "bos_token": BOS, "eos_token": EOS})
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def tiny_config(preset: str, tokenizer: PreTrainedTokenizerBase, max_positions: int = 512) -> LlamaConfig:
    """A Llama config for a tiny preset, sized to ``tokenizer``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    hidden, layers, heads, inter = PRESETS[preset]
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )


def build_tiny(preset: str, *, seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A freshly initialised tiny causal LM and its tokenizer (deterministic for ``seed``)."""
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(preset, tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory, set for left padding with a pad token."""
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


_M = TypeVar("_M", bound=torch.nn.Module)


def on_device(model: _M, device: str | torch.device) -> _M:
    """``model.to(device)`` with its type kept (transformers' decorated ``to`` hides it from type checkers)."""
    return cast(_M, torch.nn.Module.to(model, device))


def load_causal_lm(
    path: str | os.PathLike[str], *, dtype: str = "float32", device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local Hugging Face directory."""
    if not Path(path, "config.json").exists():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=getattr(torch, dtype), local_files_only=True
    )
    return on_device(model, device), load_tokenizer(path)


def model_from_config(
    preset: str | None, path: str | None, *, seed: int = 0, dtype: str = "float32", device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student (or any model) described by a ``ModelConfig``'s ``preset``/``path``."""
    if path is not None:
        return load_causal_lm(path, dtype=dtype, device=device)
    assert preset is not None
    model, tok = build_tiny(preset, seed=seed)
    return on_device(model, device), tok


def build_reward_model(
    base: PreTrainedModel | str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    """A sequence-classification model with one scalar output, initialised from ``base`` (a model or a path).

    The scalar is read at the last non-pad token (transformers' ``*ForSequenceClassification`` convention).
    """
    if isinstance(base, str | os.PathLike):
        rm = AutoModelForSequenceClassification.from_pretrained(
            str(base), num_labels=1, local_files_only=True
        )
    else:
        cfg = base.config.to_dict()
        # drop the causal LM's default two-label maps, which contradict num_labels=1
        cfg = {k: v for k, v in cfg.items() if k not in ("id2label", "label2id")}
        cfg.update(num_labels=1, pad_token_id=tokenizer.pad_token_id)
        config = type(base.config).from_dict(cfg)
        if isinstance(base, LlamaForCausalLM):
            rm = LlamaForSequenceClassification(config)
        else:
            rm = AutoModelForSequenceClassification.from_config(config)
        # copy the trunk; the score head stays freshly initialised
        missing = rm.base_model.load_state_dict(base.base_model.state_dict(), strict=False)
        assert not missing.unexpected_keys, missing.unexpected_keys
        torch.nn.init.zeros_(rm.score.weight)
    rm.config.pad_token_id = tokenizer.pad_token_id
    return rm


def save_hf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike[str]
) -> Path:
    """Save weights as safetensors plus tokenizer files, in a layout transformers and vLLM load."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@dataclass
class Generation:
    """A batch of sampled continuations.

    Attributes:
        sequences: (B, P + T) prompt (left-padded) + completion token ids, pad after eos.
        prompt_len: P, the padded prompt length.
        completion_mask: (B, T) 1 for completion tokens up to and including eos.
        texts: B decoded completions (eos and stop strings removed).
        finished: B flags, True where the completion ended with eos (or a stop string).
    """

    sequences: torch.Tensor
    prompt_len: int
    completion_mask: torch.Tensor
    texts: list[str]
    finished: list[bool]
    prompt_mask: torch.Tensor

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + T) mask over real tokens: prompt (without left padding) and completion."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: tuple[str, ...] | list[str] = (),
    generator: torch.Generator | None = None,
) -> Generation:
    """Sample one continuation per prompt (greedy when ``temperature == 0``) with a KV cache.

    Prompts are left-padded into one batch; generation stops when every row has emitted eos (or a stop
    string appears in every unfinished row's text, checked every 8 tokens).
    """
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    input_ids = enc["input_ids"].to(device)
    attn = enc["attention_mask"].to(device)
    bsz, plen = input_ids.shape
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids, use_cache=True)
    past = out.cache
    logits = out.logits[:, -1, :]
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    new_tokens: list[torch.Tensor] = []
    next_pos = position_ids[:, -1] + 1
    for step in range(max_new_tokens):
        tok = _sample(logits, temperature, top_p, generator)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        new_tokens.append(tok)
        done = done | tok.eq(eos_id)
        if bool(done.all()):
            break
        if stop and step % 8 == 7 and _all_stopped(tokenizer, new_tokens, done, stop):
            break
        attn = torch.cat([attn, attn.new_ones((bsz, 1))], dim=1)  # rows already done are ignored later
        out = model(
            input_ids=tok.unsqueeze(1),
            attention_mask=attn,
            position_ids=next_pos.unsqueeze(1),
            cache=past,
            use_cache=True,
        )
        past = out.cache
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    comp = torch.stack(new_tokens, dim=1) if new_tokens else input_ids.new_zeros((bsz, 0))  # (B, T)
    # completion mask: tokens up to and including the first eos
    is_eos = comp.eq(eos_id)
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    comp = comp.masked_fill(after_eos, pad_id)
    texts, finished = [], []
    for row, m in zip(comp.tolist(), mask.tolist(), strict=True):
        ids = [t for t, keep in zip(row, m, strict=True) if keep and t != eos_id]
        text = cast(str, tokenizer.decode(ids, skip_special_tokens=True))
        ended = eos_id in row
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text, ended = text[:cut], True
        texts.append(text)
        finished.append(ended)
    return Generation(
        torch.cat([input_ids, comp], dim=1), plen, mask, texts, finished, enc["attention_mask"].to(device)
    )


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None
) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


def _all_stopped(tok: Any, new_tokens: list[torch.Tensor], done: torch.Tensor, stop: Any) -> bool:
    comp = torch.stack(new_tokens, dim=1)
    for i in (~done).nonzero().flatten().tolist():
        text = tok.decode(comp[i].tolist(), skip_special_tokens=True)
        if not any(s in text for s in stop):
            return False
    return True


def generate_batched(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    batch_size: int,
    **kw: Any,
) -> list[str]:
    """:func:`generate` over ``prompts`` in chunks of ``batch_size``; returns the texts in order."""
    was_training = model.training
    model.eval()
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        texts.extend(generate(model, tokenizer, prompts[i : i + batch_size], **kw).texts)
    model.train(was_training)
    return texts
