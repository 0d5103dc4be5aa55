"""Tiny models of the families added in 2026 (GPT-2, SmolLM3, OLMo 2/3) and their oracles.

The LLaMA-shaped families are registered in models_families.FAMILIES, so that module's
`build` and `masked_reference` serve them unchanged (OLMo's post-norms read the attention /
MLP outputs, whose pruned rows the reference zeroes, exactly as pruning leaves them out).
GPT-2 has its own module layout (`transformer.h`, Conv1D [in, out]), masked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models import load
from models_families import FAMILIES, build

TOKENS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES.update({
    "smollm3": ("SmolLM3Config", dict(TOKENS, no_rope_layers=[1, 0, 1, 1], no_rope_layer_interval=4)),
    "olmo2": ("Olmo2Config", dict(TOKENS)),
    "olmo3": ("Olmo3Config", dict(TOKENS, sliding_window=4,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])),
    # n_inner stays null (4 x n_embd = 256); the stray intermediate_size of BASE is cleared
    "gpt2": ("GPT2Config", dict(TOKENS, n_positions=64, intermediate_size=None, tie_word_embeddings=True)),
    "qwen3_5": ("Qwen3_5TextConfig", dict(TOKENS, head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                                          linear_key_head_dim=8, linear_value_head_dim=8,
                                          layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"])),
})


def build_hub_gpt2(path: Path, src: Path) -> Path:
    """The GPT-2 checkpoint `src` rewritten in the Hub's layout: no `transformer.` prefix, and
    the causal-mask buffers `h.{i}.attn.bias` / `masked_bias` that old checkpoints carry."""
    from safetensors.numpy import load_file, save_file
    import numpy as np
    import shutil

    shutil.copytree(src, path)
    for shard in path.glob("*.safetensors"):
        shard.unlink()
    (path / "model.safetensors.index.json").unlink(missing_ok=True)
    tensors: dict[str, Any] = {}
    for shard in sorted(src.glob("*.safetensors")):
        tensors.update({k.removeprefix("transformer."): v for k, v in load_file(shard).items()})
    n = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("h."))
    positions = tensors["wpe.weight"].shape[0]
    for i in range(n):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((positions, positions), np.float32))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def masked_gpt2(src: Path, keep: dict[str, Any]) -> torch.nn.Module:
    """GPT-2 with pruned units zeroed (Conv1D weights are [in, out]) and layers removed."""
    model = load(src)
    cfg, blocks = model.config, model.transformer.h
    hd = cfg.n_embd // cfg.n_head
    with torch.no_grad():
        if "hidden" in keep:
            gone = sorted(set(range(cfg.n_embd)) - set(keep["hidden"]))
            model.transformer.wte.weight[:, gone] = 0
            model.transformer.wpe.weight[:, gone] = 0
            for norm in [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]:
                norm.weight[gone] = 0
                norm.bias[gone] = 0
            for block in blocks:
                for proj in (block.attn.c_proj, block.mlp.c_proj):
                    proj.weight[:, gone] = 0
                    proj.bias[gone] = 0
        for i, block in enumerate(blocks):
            for h in sorted(set(range(cfg.n_head)) - set(keep.get("heads", {}).get(str(i), range(cfg.n_head)))):
                block.attn.c_proj.weight[h * hd : (h + 1) * hd, :] = 0
            if str(i) in keep.get("ffn", {}):
                width = block.mlp.c_proj.weight.shape[0]
                block.mlp.c_proj.weight[sorted(set(range(width)) - set(keep["ffn"][str(i)])), :] = 0
    layers = keep.get("layers", list(range(cfg.n_layer)))
    model.transformer.h = torch.nn.ModuleList(blocks[i] for i in layers)
    for new, block in enumerate(model.transformer.h):
        block.attn.layer_idx = new
    cfg.n_layer = len(layers)
    return model


def masked_qwen3_5(src: Path, keep: dict[str, Any]) -> torch.nn.Module:
    """Qwen3.5 with pruned units zeroed: full-attention layers as LLaMA, gated DeltaNet layers by
    their out_proj (rows for hidden, dv-wide column blocks for value heads), layers removed."""
    model = load(src)
    _mask_qwen3_5(model.model, model.config, keep)
    return model


def _mask_qwen3_5(lm: torch.nn.Module, cfg: Any, keep: dict[str, Any]) -> None:
    """Mask a Qwen3.5 language model (embed_tokens, layers) in place (see masked_qwen3_5)."""
    layers = lm.layers
    hd, dv = cfg.head_dim, cfg.linear_value_head_dim
    with torch.no_grad():
        if "hidden" in keep:
            gone = sorted(set(range(cfg.hidden_size)) - set(keep["hidden"]))
            lm.embed_tokens.weight[:, gone] = 0
            for layer in layers:
                mixer = layer.self_attn.o_proj if hasattr(layer, "self_attn") else layer.linear_attn.out_proj
                mixer.weight[gone, :] = 0
                layer.mlp.down_proj.weight[gone, :] = 0
        for i, layer in enumerate(layers):
            if hasattr(layer, "self_attn"):
                for h in sorted(set(range(cfg.num_attention_heads)) - set(keep.get("heads", {}).get(str(i), range(cfg.num_attention_heads)))):
                    layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
            else:
                total = cfg.linear_num_value_heads
                for h in sorted(set(range(total)) - set(keep.get("lin_v_heads", {}).get(str(i), range(total)))):
                    layer.linear_attn.out_proj.weight[:, h * dv : (h + 1) * dv] = 0
            if str(i) in keep.get("ffn", {}):
                layer.mlp.down_proj.weight[:, sorted(set(range(cfg.intermediate_size)) - set(keep["ffn"][str(i)]))] = 0
    kept = keep.get("layers", list(range(cfg.num_hidden_layers)))
    lm.layers = torch.nn.ModuleList(layers[i] for i in kept)
    for new, layer in enumerate(lm.layers):
        (layer.self_attn if hasattr(layer, "self_attn") else layer.linear_attn).layer_idx = new
    cfg.layer_types = [cfg.layer_types[i] for i in kept]
    cfg.num_hidden_layers = len(kept)


__all__ = ["FAMILIES", "build", "build_hub_gpt2", "masked_gpt2", "masked_qwen3_5"]


GEMMA3_VLM_TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                       vocab_size=300, head_dim=8, max_position_embeddings=64, query_pre_attn_scalar=8, sliding_window=4,
                       layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                       bos_token_id=2, eos_token_id=1, pad_token_id=0)
GEMMA3_VLM_VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
IMAGE_TOKEN = 299


def _vlm_config(kind: str) -> Any:
    import transformers

    if kind == "gemma3":
        return transformers.Gemma3Config(text_config=GEMMA3_VLM_TEXT, vision_config=GEMMA3_VLM_VISION, mm_tokens_per_image=4,
                                         image_token_index=IMAGE_TOKEN, boi_token_index=297, eoi_token_index=298)
    text = {k: v for k, v in GEMMA3_VLM_TEXT.items() if k not in ("query_pre_attn_scalar", "layer_types")}
    vision = dict(GEMMA3_VLM_VISION, model_type="pixtral", head_dim=16)
    return transformers.Mistral3Config(text_config=dict(text, model_type="mistral", sliding_window=None),
                                       vision_config=vision, image_token_index=IMAGE_TOKEN, spatial_merge_size=2)


def _qwen3_5_vlm_config() -> Any:
    import transformers

    _, text = FAMILIES["qwen3_5"]
    text = dict(text, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4, vocab_size=300)
    vision = dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return transformers.Qwen3_5Config(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN, video_token_id=298,
                                      vision_start_token_id=297, vision_end_token_id=296)


def build_vlm(path: Path, kind: str = "gemma3", seed: int = 0) -> Path:
    """A tiny Gemma 3 (4 image tokens per image), Mistral 3 (Pixtral) or Qwen3.5 VLM, saved by transformers."""
    import transformers

    torch.manual_seed(seed)
    config = _qwen3_5_vlm_config() if kind == "qwen3_5" else _vlm_config(kind)
    model = transformers.AutoModelForImageTextToText.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.uniform_(0.5, 1.5)
            elif "mm_input_projection" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(path, max_shard_size="60KB")
    return path


def gemma3_in_memory_layout(src: Path, dst: Path) -> Path:
    """A copy of a Gemma 3 VLM saved under the in-memory names (`model.language_model.*`,
    `model.vision_tower.*`, `model.multi_modal_projector.*`, `lm_head.*`)."""
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    moves = {"language_model.model.": "model.language_model.", "vision_tower.": "model.vision_tower.",
             "multi_modal_projector.": "model.multi_modal_projector.", "language_model.lm_head.": "lm_head."}

    def moved(key: str) -> str:
        old = next((o for o in moves if key.startswith(o)), "")
        return moves[old] + key[len(old):] if old else key

    for shard in dst.glob("*.safetensors"):
        save_file({moved(k): v for k, v in load_file(shard).items()}, str(shard), metadata={"format": "pt"})
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    index["weight_map"] = {moved(k): v for k, v in index["weight_map"].items()}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


def load_vlm(path: Path) -> torch.nn.Module:
    """Load a VLM with transformers, asserting no missing or unexpected keys."""
    import transformers

    model, info = transformers.AutoModelForImageTextToText.from_pretrained(path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def vlm_logits(model: torch.nn.Module, images: bool) -> torch.Tensor:
    """Logits of a fixed text-only batch, or of one with a 28 x 28 image first (Gemma 3: 4 image
    tokens; Mistral 3: 4 patches merged 2 x 2 into one token)."""
    ids = torch.randint(3, 290, (2, 12), generator=torch.Generator().manual_seed(1))
    kwargs: dict[str, Any] = {}
    if images:
        kwargs["pixel_values"] = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
        if model.config.model_type == "mistral3":
            ids[:, 1] = IMAGE_TOKEN
            kwargs["image_sizes"] = torch.tensor([[28, 28], [28, 28]])
        elif model.config.model_type in ("qwen3_5", "qwen3_5_moe"):  # 2 x 2 patches of 2 frames, merged into one token
            ids[:, 1], ids[:, 2], ids[:, 3] = 297, IMAGE_TOKEN, 296
            kwargs["pixel_values"] = torch.randn(8, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(2))
            kwargs["image_grid_thw"] = torch.tensor([[1, 2, 2], [1, 2, 2]])
            kwargs["mm_token_type_ids"] = (ids == IMAGE_TOKEN).long()
        else:
            ids[:, 1:5] = IMAGE_TOKEN
            kwargs["token_type_ids"] = (ids == IMAGE_TOKEN).long()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kwargs).logits.float()


def masked_vlm(src: Path, keep: dict[str, Any]) -> torch.nn.Module:
    """The VLM with its language model masked like the text oracle (models_families) and the
    projector's pruned outputs zeroed (Gemma 3; Mistral 3's image path is approximate, only its
    text logits are compared); the vision tower untouched."""
    model = load_vlm(src)
    lm, cfg = model.model.language_model, model.config.text_config
    if model.config.model_type == "qwen3_5":
        _mask_qwen3_5(lm, cfg, keep)
        if "hidden" in keep:
            with torch.no_grad():
                gone = sorted(set(range(cfg.hidden_size)) - set(keep["hidden"]))
                model.model.visual.merger.linear_fc2.weight[gone, :] = 0
                model.model.visual.merger.linear_fc2.bias[gone] = 0
        return model
    hd = cfg.head_dim
    with torch.no_grad():
        if "hidden" in keep:
            gone = sorted(set(range(cfg.hidden_size)) - set(keep["hidden"]))
            lm.embed_tokens.weight[:, gone] = 0
            projector = model.model.multi_modal_projector
            if hasattr(projector, "mm_input_projection_weight"):
                projector.mm_input_projection_weight[:, gone] = 0
            for layer in lm.layers:
                layer.self_attn.o_proj.weight[gone, :] = 0
                layer.mlp.down_proj.weight[gone, :] = 0
        for i, layer in enumerate(lm.layers):
            for h in sorted(set(range(cfg.num_attention_heads)) - set(keep.get("heads", {}).get(str(i), range(cfg.num_attention_heads)))):
                layer.self_attn.o_proj.weight[:, h * hd : (h + 1) * hd] = 0
            if str(i) in keep.get("ffn", {}):
                layer.mlp.down_proj.weight[:, sorted(set(range(cfg.intermediate_size)) - set(keep["ffn"][str(i)]))] = 0
    kept = keep.get("layers", list(range(cfg.num_hidden_layers)))
    lm.layers = torch.nn.ModuleList(lm.layers[i] for i in kept)
    for new, layer in enumerate(lm.layers):
        layer.self_attn.layer_idx = new
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    cfg.num_hidden_layers = len(kept)
    return model
