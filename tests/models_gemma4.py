"""Tiny Gemma 4 models (text: dense, per-layer embeddings with KV sharing, 26B-A4B-style MoE;
and the Gemma4ForConditionalGeneration VLM with vision and audio towers) and their oracles:
the original with pruned units zeroed (each layer type's own head width), dropped experts'
router logits at -inf, and dropped layers removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models import load
from models_families_2026 import IMAGE_TOKEN, load_vlm

GEMMA4 = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
              vocab_size=128, head_dim=8, max_position_embeddings=64, sliding_window=4, global_head_dim=16,
              layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
              bos_token_id=2, eos_token_id=1, pad_token_id=0, final_logit_softcapping=5.0)
#: 31B-style (no per-layer embeddings, no KV sharing) and E2B-style (per-layer embeddings of
#: width 16, the last two layers reusing KV, k = v on full layers with their own kv heads)
GEMMA4_VARIANTS = {
    "dense": dict(hidden_size_per_layer_input=0, num_kv_shared_layers=0, vocab_size_per_layer_input=128),
    "ple_shared": dict(hidden_size_per_layer_input=16, num_kv_shared_layers=2, vocab_size_per_layer_input=128,
                       attention_k_eq_v=True, num_global_key_value_heads=2),
    # 26B-A4B-style: routed experts beside the dense MLP on every layer, k = v full layers
    "moe": dict(hidden_size_per_layer_input=0, num_kv_shared_layers=0, vocab_size_per_layer_input=128,
                attention_k_eq_v=True, num_global_key_value_heads=2, enable_moe_block=True, num_experts=6,
                top_k_experts=2, moe_intermediate_size=32),
}


def _perturb(model: "torch.nn.Module", layers: "torch.nn.ModuleList") -> None:
    """Non-trivial norms, router scales and layer scalars; routing that depends on the input."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ("norm" in name and name.endswith("weight")) or name.endswith(("router.scale", "per_expert_scale")):
                param.uniform_(0.5, 1.5)
            elif name.endswith("router.proj.weight"):
                param.normal_(0, 1.0)
        for layer in layers:
            layer.layer_scalar.uniform_(0.5, 1.5)


def build_gemma4(path: Path, variant: str, seed: int = 0) -> Path:
    """A tiny Gemma 4 text model with non-trivial norms and layer scalars."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.Gemma4TextConfig(**GEMMA4, **GEMMA4_VARIANTS[variant])
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    _perturb(model, model.model.layers)
    model.save_pretrained(path, max_shard_size="60KB")
    return path


def masked_gemma4(src: Path, keep: dict[str, Any]) -> torch.nn.Module:
    """Gemma 4 with pruned hidden channels and ffn neurons zeroed (embedding columns; o_proj,
    down_proj and per_layer_projection rows), layers removed with their per-layer-embedding blocks."""
    model = load(src)
    mask_gemma4(model.model, model.config, keep)
    return model


def mask_gemma4(base: torch.nn.Module, cfg: Any, keep: dict[str, Any]) -> None:
    """Mask a Gemma 4 language model (embeddings, layers) in place: pruned hidden channels,
    heads (o_proj columns of each layer type's head width), ffn neurons and expert widths
    zeroed, dropped experts' router logits -inf, layers removed (see masked_gemma4)."""
    with torch.no_grad():
        if "hidden" in keep:
            gone = sorted(set(range(cfg.hidden_size)) - set(keep["hidden"]))
            base.embed_tokens.weight[:, gone] = 0
            for layer in base.layers:
                writers = [layer.self_attn.o_proj, layer.mlp.down_proj]
                writers += [layer.per_layer_projection] if cfg.hidden_size_per_layer_input else []
                for proj in writers:
                    proj.weight[gone, :] = 0
        for i, layer in enumerate(base.layers):
            if str(i) in keep.get("ffn", {}):
                layer.mlp.down_proj.weight[:, sorted(set(range(cfg.intermediate_size)) - set(keep["ffn"][str(i)]))] = 0
            space = "full_heads" if cfg.layer_types[i] == "full_attention" else "heads"  # each type its own head width
            hd, n = layer.self_attn.head_dim, cfg.num_attention_heads
            for h in sorted(set(range(n)) - set(keep.get(space, {}).get(str(i), range(n)))):
                layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
            if hasattr(layer, "router") and str(i) in keep.get("experts", {}):  # dropped experts are never routed to
                gone = sorted(set(range(cfg.num_experts)) - set(keep["experts"][str(i)]))
                mask = torch.zeros(cfg.num_experts)
                mask[gone] = float("-inf")  # router logits of dropped experts: -inf (never routed to)
                layer.router.proj.bias = torch.nn.Parameter(mask)
            if hasattr(layer, "experts") and str(i) in keep.get("moe_ffn", {}):
                width = cfg.moe_intermediate_size
                layer.experts.down_proj[:, :, sorted(set(range(width)) - set(keep["moe_ffn"][str(i)]))] = 0
            if hasattr(layer, "experts") and "hidden" in keep:
                layer.experts.down_proj[:, sorted(set(range(cfg.hidden_size)) - set(keep["hidden"])), :] = 0
    kept = keep.get("layers", list(range(cfg.num_hidden_layers)))
    if cfg.hidden_size_per_layer_input:
        p = cfg.hidden_size_per_layer_input
        cols = torch.tensor([i * p + j for i in kept for j in range(p)])
        base.embed_tokens_per_layer.weight = torch.nn.Parameter(base.embed_tokens_per_layer.weight[:, cols].clone())
        base.per_layer_model_projection.weight = torch.nn.Parameter(base.per_layer_model_projection.weight[cols].clone())
    base.layers = torch.nn.ModuleList(base.layers[i] for i in kept)
    for new, layer in enumerate(base.layers):
        layer.self_attn.layer_idx = new
    cfg.layer_types = [cfg.layer_types[i] for i in kept]
    cfg.num_hidden_layers = len(kept)


GEMMA4_VLM_VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=16, patch_size=4, pooling_kernel_size=2, position_embedding_size=64)
GEMMA4_VLM_AUDIO = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, output_proj_dims=24, subsampling_conv_channels=[8, 4])


def build_gemma4_vlm(path: Path, variant: str, audio: bool = True, seed: int = 0) -> Path:
    """A tiny Gemma4ForConditionalGeneration: a Gemma 4 text model of `variant` (GEMMA4_VARIANTS,
    vocabulary 300), a vision tower and, with `audio`, an audio tower, saved by transformers."""
    import transformers

    torch.manual_seed(seed)
    text = dict(GEMMA4, **GEMMA4_VARIANTS[variant], vocab_size=300)
    text["vocab_size_per_layer_input"] = 300
    config = transformers.Gemma4Config(text_config=text, vision_config=GEMMA4_VLM_VISION, audio_config=GEMMA4_VLM_AUDIO if audio else None,
                                       image_token_id=IMAGE_TOKEN, boi_token_id=297, eoi_token_id=298, audio_token_id=296,
                                       boa_token_id=295, eoa_token_index=294, video_token_id=293)
    model = transformers.AutoModelForImageTextToText.from_config(config).eval()
    _perturb(model, model.model.language_model.layers)
    model.save_pretrained(path, max_shard_size="60KB")
    return path


def masked_gemma4_vlm(src: Path, keep: dict[str, Any]) -> torch.nn.Module:
    """The Gemma 4 VLM with its language model masked like masked_gemma4 and the vision / audio
    projections' pruned output rows zeroed; the towers untouched."""
    model = load_vlm(src)
    mask_gemma4(model.model.language_model, model.config.text_config, keep)
    if "hidden" in keep:
        gone = sorted(set(range(model.config.text_config.hidden_size)) - set(keep["hidden"]))
        with torch.no_grad():
            for embedder in (model.model.embed_vision, model.model.embed_audio):
                if embedder is not None:
                    embedder.embedding_projection.weight[gone, :] = 0
    return model
