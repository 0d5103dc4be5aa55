"""Helpers of the Megatron tests: tiny LLaMA checkpoints (GQA: 8 heads, 4 kv groups) and comparisons."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import transformers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_llama(folder: Path, *, tied: bool, dtype: str, seed: int = 0) -> Path:
    """Save a random tiny LLaMA (hidden 64, ffn 96, 3 layers, 8 heads, 4 kv heads, vocab 100)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=100, tie_word_embeddings=tied, initializer_range=0.2,
    )
    model = transformers.LlamaForCausalLM(config).to(DTYPES[dtype])
    with torch.no_grad():  # random norms, so that rescaling and slicing them is visible
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.3 * torch.randn_like(param.float()))
    model.save_pretrained(folder)
    return folder


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file of a folder (recursively) by relative name."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hf_tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (dtype, shape, raw bytes) of every tensor of an HF folder."""
    from safetensors import safe_open

    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                t = handle.get_tensor(name)
                out[name] = (str(t.dtype), tuple(t.shape), t.contiguous().view(torch.uint8).numpy().tobytes())
    return out


def rescale(weight, factor: float):
    """A weight times `factor` (hidden pruning's rule), computed in float32 and rounded back (torch rounds to nearest even)."""
    return (weight.float() * np.float32(factor)).to(weight.dtype)
