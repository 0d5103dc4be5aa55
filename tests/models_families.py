"""Tiny models of the non-LLaMA families and their masked references (the oracles).

Every model is built from its transformers config class (never downloaded).  The masked
reference is written against the *loaded torch modules*, not tensor names, so it is
independent of the architecture tables it checks:

- hidden channels: zero everything that writes them into the residual stream (embedding
  columns, attention-output and down-projection rows and biases, every expert's and the
  shared expert's down rows); under LayerNorm also the norm's weight and bias of those
  channels, so that no consumer sees them (the statistics still differ: approximate);
- heads / kv groups: zero the attention-output columns of the dropped heads;
- ffn neurons (dense, per expert, shared expert): zero the down-projection columns;
- experts: the router and the expert stacks keep only the kept experts, in order (the
  routing softmax then runs over kept experts only, which is what dropping experts means);
- layers: the kept layers only, with `layer_idx` and per-layer config lists renumbered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

from models import load

BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, vocab_size=128, max_position_embeddings=64, tie_word_embeddings=False)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
GEMMA = dict(head_dim=8, bos_token_id=2, eos_token_id=1, pad_token_id=0, sliding_window=4)

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "phi3": ("Phi3Config", dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(MOE, num_experts=4, shared_expert_intermediate_size=48,
                                         decoder_sparse_step=2, mlp_only_layers=[3])),
    "qwen3_moe": ("Qwen3MoeConfig", dict(MOE, num_experts=4, head_dim=8, decoder_sparse_step=1, mlp_only_layers=[1])),
    "gemma": ("GemmaConfig", dict(GEMMA, tie_word_embeddings=True)),
    "gemma2": ("Gemma2Config", dict(GEMMA, tie_word_embeddings=True, query_pre_attn_scalar=8,
                                    attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3": ("Gemma3TextConfig", dict(GEMMA, tie_word_embeddings=True, query_pre_attn_scalar=8,
                                        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])),
    "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.25, bos_token_id=0, eos_token_id=2)),
}

#: which module each ffn-like space prunes: a dense MLP, every expert, or the shared expert
FFN_SPACES: dict[str, dict[str, str]] = {
    "mixtral": {"ffn": "experts"},
    "qwen2_moe": {"ffn": "dense", "moe_ffn": "experts", "shared_ffn": "shared"},
    "qwen3_moe": {"ffn": "dense", "moe_ffn": "experts"},
}


def family_of(name: str) -> str:
    """'gemma_untied' -> 'gemma'."""
    return name if name in FAMILIES else name.rsplit("_", 1)[0]


def build(path: Path, family: str, seed: int = 0, shard: str | None = "60KB", **overrides: Any) -> Path:
    """Save a randomly initialised tiny model of `family` (non-trivial norms and biases)."""
    torch.manual_seed(seed)
    name, extra = FAMILIES[family]
    config = getattr(transformers, name)(**{**BASE, **extra, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname and pname.endswith("weight"):
                param.uniform_(0.5, 1.5)
            elif pname.endswith("bias") or "router" in pname or pname.endswith("gate.weight"):
                param.normal_(0, 0.1 if pname.endswith("bias") else 0.5)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return path


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.gpt_neox.layers if hasattr(model, "gpt_neox") else model.model.layers


def _attn(layer: torch.nn.Module) -> torch.nn.Module:
    return layer.attention if hasattr(layer, "attention") else layer.self_attn


def _out_proj(layer: torch.nn.Module) -> torch.nn.Linear:
    attn = _attn(layer)
    return attn.dense if hasattr(attn, "dense") else attn.o_proj


def _down(mlp: torch.nn.Module) -> torch.nn.Linear:
    return mlp.dense_4h_to_h if hasattr(mlp, "dense_4h_to_h") else mlp.down_proj


def _layernorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]


def masked_reference(src: Path, family: str, keep: dict[str, Any]) -> torch.nn.Module:
    """The source model with pruned units zeroed, experts and layers removed."""
    model = load(src)
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    ffn_spaces = FFN_SPACES.get(family_of(family), {"ffn": "dense"})
    layers = _layers(model)
    with torch.no_grad():
        if "hidden" in keep:
            gone = sorted(set(range(cfg.hidden_size)) - set(keep["hidden"]))
            model.get_input_embeddings().weight[:, gone] = 0
            for norm in _layernorms(model):
                norm.weight[gone] = 0
                norm.bias[gone] = 0
            for layer in layers:
                for proj in [_out_proj(layer)] + ([] if hasattr(layer.mlp, "experts") else [_down(layer.mlp)]):
                    proj.weight[gone, :] = 0
                    if proj.bias is not None:
                        proj.bias[gone] = 0
                if hasattr(layer.mlp, "experts"):
                    layer.mlp.experts.down_proj[:, gone, :] = 0
                if hasattr(layer.mlp, "shared_expert"):
                    layer.mlp.shared_expert.down_proj.weight[gone, :] = 0
        for i, layer in enumerate(layers):
            if str(i) in keep.get("heads", {}):
                for h in sorted(set(range(cfg.num_attention_heads)) - set(keep["heads"][str(i)])):
                    _out_proj(layer).weight[:, h * hd : (h + 1) * hd] = 0
            for space, kind in ffn_spaces.items():
                for scope, kept in keep.get(space, {}).items():
                    if scope.split(".")[0] != str(i):
                        continue
                    if kind == "dense" and not hasattr(layer.mlp, "experts"):
                        width = _down(layer.mlp).weight.shape[1]
                        _down(layer.mlp).weight[:, sorted(set(range(width)) - set(kept))] = 0
                    elif kind == "shared" and hasattr(layer.mlp, "shared_expert"):
                        down = layer.mlp.shared_expert.down_proj.weight
                        down[:, sorted(set(range(down.shape[1])) - set(kept))] = 0
                    elif kind == "experts" and hasattr(layer.mlp, "experts"):
                        down = layer.mlp.experts.down_proj[int(scope.split(".")[1])]
                        down[:, sorted(set(range(down.shape[1])) - set(kept))] = 0
            if str(i) in keep.get("experts", {}) and hasattr(layer.mlp, "experts"):
                _keep_experts(layer.mlp, keep["experts"][str(i)])
    kept_layers = keep.get("layers", list(range(cfg.num_hidden_layers)))
    if hasattr(model, "gpt_neox"):
        model.gpt_neox.layers = torch.nn.ModuleList(layers[i] for i in kept_layers)
    else:
        model.model.layers = torch.nn.ModuleList(layers[i] for i in kept_layers)
    for new, layer in enumerate(_layers(model)):
        _attn(layer).layer_idx = new
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in kept_layers]
    cfg.num_hidden_layers = len(kept_layers)
    return model


def _keep_experts(moe: torch.nn.Module, kept: list[int]) -> None:
    idx = torch.tensor(kept)
    moe.gate.weight = torch.nn.Parameter(moe.gate.weight[idx].clone())
    moe.gate.num_experts = len(kept)
    moe.experts.gate_up_proj = torch.nn.Parameter(moe.experts.gate_up_proj[idx].clone())
    moe.experts.down_proj = torch.nn.Parameter(moe.experts.down_proj[idx].clone())
    moe.experts.num_experts = len(kept)
