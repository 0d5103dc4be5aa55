"""Tiny Qwen3.5-MoE VLMs and Qwen3.5 checkpoints carrying multi-token-prediction weights (`mtp.*`),
and their oracles, for tests/test_qwen3_5_mtp.py.

transformers neither models the MTP head nor loads `mtp.*` (its Qwen3.5 classes ignore them).
`add_mtp` makes MTP weights as the released repos hold them: the model is built with one more
decoder layer, of full attention, whose tensors move to `mtp.layers.0.*`; `mtp.fc`, the two
pre-fc norms and `mtp.norm` are added and the config gets `mtp_num_hidden_layers: 1`.
`mtp_as_layer` puts `mtp.layers.0.*` back in place of an ordinary full-attention decoder layer,
so transformers runs it as a decoder layer module: a pruned checkpoint and the masked source,
both swapped that way, must give the same logits (with the MTP layer's own selections moved to
that layer's scope, `swapped_keep`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file

from models_families_2026 import IMAGE_TOKEN, load_vlm
from models_moe2026 import FAMILIES as MOE_FAMILIES
from models_moe2026 import init_weights, mask_language_model, mtp_tensors

LAYER_TYPES = ["linear_attention", "linear_attention", "linear_attention", "full_attention", "full_attention"]
VISION = dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=2)


def build_moe_vlm(path: Path, layers: int = 4, seed: int = 0) -> Path:
    """A tiny Qwen3_5MoeForConditionalGeneration (model_type qwen3_5_moe), saved by transformers
    (experts per expert, as 5.24 writes them)."""
    torch.manual_seed(seed)
    _, moe = MOE_FAMILIES["qwen3_5_moe"]
    text = dict(moe, hidden_size=64, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                vocab_size=300, max_position_embeddings=64, layer_types=LAYER_TYPES[:4] + LAYER_TYPES[4:layers])
    config = transformers.Qwen3_5MoeConfig(text_config=text, vision_config=VISION, image_token_id=IMAGE_TOKEN,
                                           video_token_id=298, vision_start_token_id=297, vision_end_token_id=296)
    model = transformers.AutoModelForImageTextToText.from_config(config).eval()
    init_weights(model)
    model.save_pretrained(path, max_shard_size="200KB")
    return path


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config dict holding the language model's sizes (`text_config` of a VLM)."""
    return config.get("text_config", config)


def layer_prefix(config: dict[str, Any]) -> str:
    """Where the decoder layers are stored: `model.language_model.layers.` (VLM) or `model.layers.`."""
    return "model.language_model.layers." if "text_config" in config else "model.layers."


def _rewrite(folder: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    """Replace a checkpoint folder's shards by one file holding `tensors`, and its config."""
    for old in list(folder.glob("*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
        old.unlink()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))


def add_mtp(path: Path) -> Path:
    """Turn the last decoder layer (full attention) of a saved checkpoint into `mtp.layers.0`, in place."""
    config = json.loads((path / "config.json").read_text())
    text = text_config(config)
    n, hidden = text["num_hidden_layers"] - 1, text["hidden_size"]
    assert text["layer_types"][n] == "full_attention", text["layer_types"]
    old = f"{layer_prefix(config)}{n}."
    tensors = {(f"mtp.layers.0.{k[len(old):]}" if k.startswith(old) else k): v for k, v in mtp_tensors(path).items()}
    gen = torch.Generator().manual_seed(7)
    tensors.update({
        "mtp.fc.weight": torch.randn(hidden, 2 * hidden, generator=gen) / hidden**0.5,
        "mtp.pre_fc_norm_embedding.weight": torch.rand(hidden, generator=gen) - 0.5,
        "mtp.pre_fc_norm_hidden.weight": torch.rand(hidden, generator=gen) - 0.5,
        "mtp.norm.weight": torch.rand(hidden, generator=gen) - 0.5,
    })
    text.update(num_hidden_layers=n, layer_types=text["layer_types"][:n], mtp_num_hidden_layers=1,
                mtp_use_dedicated_embeddings=False)
    _rewrite(path, tensors, config)
    return path


def mtp_as_layer(src: Path, dst: Path, layer: int) -> Path:
    """A copy of `src` whose decoder layer `layer` (full attention) is its MTP layer and which
    holds no other `mtp.*` tensor: transformers runs the MTP layer as that decoder layer."""
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    text = text_config(config)
    assert text["layer_types"][layer] == "full_attention", text["layer_types"]
    prefix = f"{layer_prefix(config)}{layer}."
    tensors = {k: v for k, v in mtp_tensors(src).items() if not k.startswith(("mtp.", prefix))}
    tensors.update({prefix + k[len("mtp.layers.0."):]: v for k, v in mtp_tensors(src).items() if k.startswith("mtp.layers.0.")})
    text.pop("mtp_num_hidden_layers")
    _rewrite(dst, tensors, config)
    return dst


def swapped_keep(keep: dict[str, Any], layer: int, mtp_scope: str) -> dict[str, Any]:
    """`keep` with the MTP layer's selections (scope `mtp_scope`) as original layer `layer`'s."""
    out: dict[str, Any] = {}
    for space, value in keep.items():
        if isinstance(value, dict) and mtp_scope in value:
            value = {k: v for k, v in value.items() if k != mtp_scope}
            value[str(layer)] = keep[space][mtp_scope]
        out[space] = value
    return out


def masked_moe_vlm(src: Path, keep: dict[str, Any]) -> torch.nn.Module:
    """A Qwen3.5-MoE VLM with its language model masked as the MoE text oracle (models_moe2026)
    and the merger's pruned text-hidden rows zeroed; the rest of the vision tower untouched."""
    model = load_vlm(src)
    mask_language_model(model.model.language_model, model.config.text_config, keep)
    if "hidden" in keep:
        gone = sorted(set(range(model.config.text_config.hidden_size)) - set(keep["hidden"]))
        with torch.no_grad():
            model.model.visual.merger.linear_fc2.weight[gone, :] = 0
            model.model.visual.merger.linear_fc2.bias[gone] = 0
    return model
