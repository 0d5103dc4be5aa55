"""Tiny transformers models built in the tests (never downloaded) and the masked references."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import transformers

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
}


def tiny_config(family: str = "llama", **overrides: Any) -> transformers.PretrainedConfig:
    """A small config of `family`: hidden 64, 8 heads over 4 kv groups, ffn 96, 4 layers."""
    name, extra = FAMILIES[family]
    values = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)
    values.update(extra)
    values.update(overrides)
    return getattr(transformers, name)(**values)


def build(path: Path, family: str = "llama", seed: int = 0, shard: str | None = "60KB",
          dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """Save a randomly initialised tiny model of `family` to `path` and return it."""
    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():  # make norms non-trivial so rescaling is really tested
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0, 0.1)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kwargs)
    return path


def load(path: Path) -> torch.nn.Module:
    """Load a checkpoint with transformers, asserting no missing or unexpected keys."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def keep_of(out: Path) -> dict[str, Any]:
    """The kept indices recorded in OUT/prune_surgery.json."""
    return json.loads((out / "prune_surgery.json").read_text())["keep"]


def masked_reference(src: Path, keep: dict[str, Any]) -> torch.nn.Module:
    """The source model with pruned units zeroed and dropped layers removed: the oracle."""
    model = load(src)
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    with torch.no_grad():
        if "hidden" in keep:
            gone = sorted(set(range(cfg.hidden_size)) - set(keep["hidden"]))
            model.model.embed_tokens.weight[:, gone] = 0
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight[gone, :] = 0
                if layer.self_attn.o_proj.bias is not None:
                    layer.self_attn.o_proj.bias[gone] = 0
                layer.mlp.down_proj.weight[gone, :] = 0
        for i, layer in enumerate(model.model.layers):
            if "heads" in keep and str(i) in keep["heads"]:
                for h in sorted(set(range(cfg.num_attention_heads)) - set(keep["heads"][str(i)])):
                    layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
            if "ffn" in keep and str(i) in keep["ffn"]:
                gone = sorted(set(range(cfg.intermediate_size)) - set(keep["ffn"][str(i)]))
                layer.mlp.down_proj.weight[:, gone] = 0
    layers = keep.get("layers", list(range(cfg.num_hidden_layers)))
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in layers)
    for new, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new
    return model


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits of `ids` without a cache."""
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits.float()


def sample_ids(vocab: int = 128, seed: int = 1) -> torch.Tensor:
    """A fixed batch of token ids."""
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file in a folder (to prove the source is never modified)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
