"""Tiny models of today's MoE families (glm4_moe, deepseek_v3 and the types that reuse its MLA
table) and their masked references, the oracles of tests/test_moe_2026.py.

Built from transformers config classes, never downloaded.  The reference is written against
the loaded torch modules (as in models_families), independent of the tables it checks:

- hidden: zero the embedding columns and every row that writes the residual stream (o_proj,
  dense, routed and shared down projections);
- heads: zero the o_proj columns of dropped heads (v_head_dim wide under MLA);
- ffn (dense), moe_ffn (per routed expert), shared_ffn: zero the down-projection columns;
- experts: the router (weight and e_score_correction_bias) and the expert stacks keep only the
  kept experts, in order, so group routing runs over n_group groups of the kept experts;
- layers: the kept layers only, renumbered.

MTP layers: transformers does not model them; `add_mtp` turns the last decoder layer of a
saved tiny model into an MTP layer (num_hidden_layers - 1, num_nextn_predict_layers 1, plus
the MTP-only tensors), and `load` can treat it as an ordinary last decoder layer again
(`mtp_as_layer`), so the oracle covers its attention and MoE block too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file

from models_families import BASE

MOE = dict(n_routed_experts=8, moe_intermediate_size=32, num_experts_per_tok=2, n_group=2, topk_group=1,
           first_k_dense_replace=1, n_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=1.5)
MLA = dict(q_lora_rank=24, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6,
           num_key_value_heads=8)

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "glm4_moe": ("Glm4MoeConfig", dict(MOE, attention_bias=True, use_qk_norm=True, head_dim=8)),
    "glm4_moe_noqk": ("Glm4MoeConfig", dict(MOE, attention_bias=False, use_qk_norm=False)),
    "deepseek_v3": ("DeepseekV3Config", dict(MOE, **MLA)),
    "glm4_moe_lite": ("Glm4MoeLiteConfig", dict(MOE, **MLA)),
    "qwen3_5_moe": ("Qwen3_5MoeTextConfig", dict(num_experts=4, moe_intermediate_size=32, num_experts_per_tok=2,
                                                 shared_expert_intermediate_size=48, head_dim=8, linear_num_key_heads=2,
                                                 linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8)),
    "gpt_oss": ("GptOssConfig", dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32, head_dim=8,
                                     layer_types=["sliding_attention", "full_attention"] * 2, sliding_window=4)),
}


def build(path: Path, variant: str, seed: int = 0, layers: int = 4, **overrides: Any) -> Path:
    """Save a randomly initialised tiny model of `variant` (non-trivial norms, biases, routers)."""
    torch.manual_seed(seed)
    name, extra = FAMILIES[variant]
    config = getattr(transformers, name)(**{**BASE, "num_hidden_layers": layers, **extra, **overrides})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    init_weights(model)
    model.save_pretrained(path, max_shard_size="200KB")
    return path


def init_weights(model: torch.nn.Module) -> None:
    """Non-trivial norms, biases, sinks and routers (a fresh model's are ones and zeros), in place."""
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname and pname.endswith("weight"):
                param.uniform_(0.5, 1.5)
            elif pname.endswith("bias") or pname.endswith("sinks") or pname.endswith(("gate.weight", "router.weight")):
                param.normal_(0, 0.1 if pname.endswith("bias") else 0.5)
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0, 0.05)


def add_mtp(path: Path) -> Path:
    """Turn the last decoder layer of a saved checkpoint into an MTP layer, in place."""
    config = json.loads((path / "config.json").read_text())
    n = config["num_hidden_layers"] - 1
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    gen = torch.Generator().manual_seed(5)
    extras = {
        f"model.layers.{n}.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen),
        f"model.layers.{n}.enorm.weight": torch.rand(hidden, generator=gen) + 0.5,
        f"model.layers.{n}.hnorm.weight": torch.rand(hidden, generator=gen) + 0.5,
        f"model.layers.{n}.eh_proj.weight": torch.randn(hidden, 2 * hidden, generator=gen),
        f"model.layers.{n}.shared_head.norm.weight": torch.rand(hidden, generator=gen) + 0.5,
        f"model.layers.{n}.shared_head.head.weight": torch.randn(vocab, hidden, generator=gen),
    }
    save_file(extras, path / "mtp.safetensors", metadata={"format": "pt"})
    index = json.loads((path / "model.safetensors.index.json").read_text())
    index["weight_map"].update({k: "mtp.safetensors" for k in extras})
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    config.update(num_hidden_layers=n, num_nextn_predict_layers=1)
    (path / "config.json").write_text(json.dumps(config))
    return path


def mtp_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (float32 tiny models: small)."""
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def load(path: Path, mtp_as_layer: bool = False) -> torch.nn.Module:
    """Load with transformers: no missing keys; unexpected keys only those of MTP layers
    (all of them, or with `mtp_as_layer` only the MTP-only extras)."""
    config = transformers.AutoConfig.from_pretrained(path)
    n = config.num_hidden_layers
    mtp = getattr(config, "num_nextn_predict_layers", 0) or 0
    if mtp_as_layer:
        config.num_hidden_layers = n + mtp
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, config=config, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    extras = (".embed_tokens.", ".enorm.", ".hnorm.", ".eh_proj.", ".shared_head.")
    for key in info["unexpected_keys"]:
        layer = int(key.split(".")[2]) if key.startswith("model.layers.") else -1
        assert layer >= n and (not mtp_as_layer or any(e in key for e in extras)), key
    return model.eval()


def masked_reference(src: Path, keep: dict[str, Any], mtp_as_layer: bool = False) -> torch.nn.Module:
    """The source with pruned units zeroed, experts and layers removed (see module doc)."""
    model = load(src, mtp_as_layer)
    mask_language_model(model.model, model.config, keep, mtp_as_layer)
    return model


def mask_language_model(lm: torch.nn.Module, cfg: Any, keep: dict[str, Any], mtp_as_layer: bool = False) -> None:
    """Mask a language model (`embed_tokens`, `layers`) and its text config in place (see masked_reference)."""
    hd = getattr(cfg, "v_head_dim", None) or getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layers = lm.layers
    with torch.no_grad():
        gone_hidden = sorted(set(range(cfg.hidden_size)) - set(keep.get("hidden", range(cfg.hidden_size))))
        lm.embed_tokens.weight[:, gone_hidden] = 0
        for i, layer in enumerate(layers):
            mlp = layer.mlp
            o_proj = layer.self_attn.o_proj if hasattr(layer, "self_attn") else layer.linear_attn.out_proj
            shared = getattr(mlp, "shared_experts", None) or getattr(mlp, "shared_expert", None)
            downs = [shared.down_proj.weight] if shared is not None else []
            downs += [] if hasattr(mlp, "experts") else [mlp.down_proj.weight]
            for weight in [o_proj.weight] + downs:
                weight[gone_hidden, :] = 0
            if o_proj.bias is not None:
                o_proj.bias[gone_hidden] = 0
            if hasattr(mlp, "experts") and FUSED_IH(mlp):
                mlp.experts.down_proj[:, :, gone_hidden] = 0
                mlp.experts.down_proj_bias[:, gone_hidden] = 0
            elif hasattr(mlp, "experts"):
                mlp.experts.down_proj[:, gone_hidden, :] = 0
            heads, width = ("heads", hd) if hasattr(layer, "self_attn") else ("lin_v_heads", getattr(cfg, "linear_value_head_dim", 0))
            total = o_proj.weight.shape[1] // width
            for h in sorted(set(range(total)) - set(keep.get(heads, {}).get(str(i), range(total)))):
                o_proj.weight[:, h * width : (h + 1) * width] = 0
            _zero_ffn(mlp, keep, i)
            if str(i) in keep.get("experts", {}) and hasattr(mlp, "experts"):
                _keep_experts(mlp, keep["experts"][str(i)])
    kept = list(keep.get("layers", range(cfg.num_hidden_layers)))
    if mtp_as_layer:
        kept += list(range(len(layers) - cfg.num_nextn_predict_layers, len(layers)))
    lm.layers = torch.nn.ModuleList(layers[i] for i in kept)
    for new, layer in enumerate(lm.layers):
        (layer.self_attn if hasattr(layer, "self_attn") else layer.linear_attn).layer_idx = new
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    cfg.num_hidden_layers = len(kept)


def FUSED_IH(mlp: torch.nn.Module) -> bool:  # noqa: N802
    """gpt_oss layout: experts.down_proj (E, ffn, hidden) with biases, router at mlp.router."""
    return hasattr(mlp.experts, "down_proj_bias")


def _zero_columns(weight: torch.Tensor, kept: list[int]) -> None:
    weight[:, sorted(set(range(weight.shape[1])) - set(kept))] = 0


def _zero_ffn(mlp: torch.nn.Module, keep: dict[str, Any], layer: int) -> None:
    if not hasattr(mlp, "experts"):
        if str(layer) in keep.get("ffn", {}):
            _zero_columns(mlp.down_proj.weight, keep["ffn"][str(layer)])
        return
    if FUSED_IH(mlp):
        if str(layer) in keep.get("ffn", {}):
            gone = sorted(set(range(mlp.experts.down_proj.shape[1])) - set(keep["ffn"][str(layer)]))
            mlp.experts.down_proj[:, gone, :] = 0
        return
    shared = getattr(mlp, "shared_experts", None) or getattr(mlp, "shared_expert", None)
    if str(layer) in keep.get("shared_ffn", {}):
        _zero_columns(shared.down_proj.weight, keep["shared_ffn"][str(layer)])
    for scope, kept in keep.get("moe_ffn", {}).items():
        owner, _, expert = scope.partition(".")  # "<layer>.<expert>", or "<layer>" for every expert
        for e in ([int(expert)] if expert else range(mlp.experts.down_proj.shape[0])) if int(owner) == layer else ():
            _zero_columns(mlp.experts.down_proj[e], kept)


def _keep_experts(moe: torch.nn.Module, kept: list[int]) -> None:
    idx = torch.tensor(kept)
    router = moe.router if hasattr(moe, "router") else moe.gate
    router.weight = torch.nn.Parameter(router.weight[idx].clone())
    for name in ("bias", "e_score_correction_bias"):
        if getattr(router, name, None) is not None:
            setattr(router, name, torch.nn.Parameter(getattr(router, name)[idx].clone()))
    router.num_experts = len(kept)
    for name in ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias"):
        if hasattr(moe.experts, name):
            setattr(moe.experts, name, torch.nn.Parameter(getattr(moe.experts, name)[idx].clone()))
    moe.experts.num_experts = len(kept)


def quantize_fp8(folder: Path, block: int = 16) -> Path:
    """Quantize every linear weight of a saved checkpoint to FP8 e4m3 with one scale per
    block x block tile (`weight_scale_inv`: value = code * scale), as DeepSeek-V3 ships; in place."""
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    for shard in sorted(folder.glob("*.safetensors")):
        tensors, out = load_file(shard), {}
        for key, w in tensors.items():
            if w.ndim != 2 or not key.endswith("proj.weight"):
                out[key] = w
                continue
            (r, c), (rb, cb) = w.shape, (-(-w.shape[0] // block), -(-w.shape[1] // block))
            tiles = torch.zeros(rb * block, cb * block)
            tiles[:r, :c] = w
            tiles = tiles.reshape(rb, block, cb, block)
            scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
            codes = (tiles / scale[:, None, :, None]).reshape(rb * block, cb * block)[:r, :c]
            out[key], out[key + "_scale_inv"] = codes.to(torch.float8_e4m3fn), scale.float()
            index["weight_map"][key + "_scale_inv"] = shard.name
        save_file(out, shard, metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [block, block]}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def dequantize_fp8(src: Path, dst: Path) -> Path:
    """A float32 copy of an FP8 block-quantized checkpoint (code * scale, exactly), config without
    quantization_config: the exact reference for quantized outputs (transformers' own CPU
    dequantization rounds through bf16)."""
    config = json.loads((src / "config.json").read_text())
    block = (config.pop("quantization_config", None) or {}).get("weight_block_size", [1, 1])
    dst.mkdir()
    tensors = mtp_tensors(src)
    out = {}
    for key, value in tensors.items():
        if key.endswith("_scale_inv"):
            continue
        scale = tensors.get(key + "_scale_inv")
        if scale is not None:
            rows = torch.arange(value.shape[0]) // block[0]
            cols = torch.arange(value.shape[1]) // block[1]
            value = value.float() * scale[rows][:, cols]
        out[key] = value.float()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def fuse_experts(src: Path, dst: Path) -> Path:
    """The Hub layout of a Qwen3.5-MoE checkpoint saved per expert by transformers:
    mlp.experts.gate_up_proj (E, 2I, H) = [gate; up] and mlp.experts.down_proj (E, H, I)."""
    dst.mkdir()
    tensors, out = mtp_tensors(src), {}
    for key, value in tensors.items():
        if ".mlp.experts." not in key:
            out[key] = value
        elif key.endswith(".0.gate_proj.weight"):
            prefix = key[: -len("0.gate_proj.weight")]
            count = sum(1 for k in tensors if k.startswith(prefix) and k.endswith(".gate_proj.weight"))
            experts = [[tensors[f"{prefix}{e}.{p}_proj.weight"] for p in ("gate", "up", "down")] for e in range(count)]
            out[prefix + "gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u, _ in experts])
            out[prefix + "down_proj"] = torch.stack([d for _, _, d in experts])
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


FP4 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def quantize_mxfp4(src: Path, dst: Path) -> Path:
    """The Hub's MXFP4 layout of a saved tiny gpt_oss: every expert tensor (E, a, b) becomes
    `_blocks` (E, b, a/32, 16) of e2m1 codes (low nibble first) and `_scales` (E, b, a/32) of
    E8M0 exponents (the values transposed, as gpt-oss ships them)."""
    dst.mkdir()
    out = {}
    for key, value in mtp_tensors(src).items():
        if not key.endswith(("experts.gate_up_proj", "experts.down_proj")):
            out[key] = value
            continue
        groups = value.transpose(1, 2).contiguous().reshape(*value.shape[:1], value.shape[2], value.shape[1] // 32, 32)
        exponent = torch.ceil(torch.log2(groups.abs().amax(-1).clamp(min=2**-100) / 6.0))
        codes = (groups / torch.exp2(exponent)[..., None])[..., None].sub(FP4).abs().argmin(-1).to(torch.uint8)
        out[key + "_blocks"] = codes[..., 0::2] | (codes[..., 1::2] << 4)
        out[key + "_scales"] = (exponent + 127).to(torch.uint8)
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def dequantize_mxfp4(src: Path, dst: Path) -> Path:
    """A float32 copy of an MXFP4 gpt_oss checkpoint in transformers' layout (exact values)."""
    dst.mkdir()
    tensors, out = mtp_tensors(src), {}
    for key, value in tensors.items():
        if key.endswith("_scales"):
            continue
        if key.endswith("_blocks"):
            scales = tensors[key[: -len("_blocks")] + "_scales"]
            values = torch.stack([FP4[(value & 0x0F).long()], FP4[(value >> 4).long()]], dim=-1).reshape(*value.shape[:-1], 32)
            values = values * torch.exp2(scales.float() - 127)[..., None]
            key, value = key[: -len("_blocks")], values.reshape(*value.shape[:-2], -1).transpose(1, 2).contiguous()
        out[key] = value.float() if value.is_floating_point() else value
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(config))
    return dst
