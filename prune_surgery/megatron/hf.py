"""The Hugging Face side: LLaMA tensor names, a raw reader over safetensors, and config.json.

Megatron roles map to HF tensors one to one except QKV (q_proj, k_proj, v_proj) and SwiGLU
fc1 (gate_proj, up_proj), which are one Megatron tensor each.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint
from ..dtypes import raw_dtype
from ..errors import ArchitectureError, CheckpointError
from ..storage import Blob
from .layout import SegmentReader, Shapes, padded_vocab, qkv_from_hf, vocab_reader

_L = "model.layers.{i}."
HF_NAMES: dict[str, str] = {
    "embedding": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "output": "lm_head.weight",
    "input_norm": _L + "input_layernorm.weight", "mlp_norm": _L + "post_attention_layernorm.weight",
    "q": _L + "self_attn.q_proj.weight", "k": _L + "self_attn.k_proj.weight", "v": _L + "self_attn.v_proj.weight",
    "proj": _L + "self_attn.o_proj.weight", "gate": _L + "mlp.gate_proj.weight", "up": _L + "mlp.up_proj.weight",
    "fc2": _L + "mlp.down_proj.weight",
}
#: Megatron role -> the HF parts it is made of, in order
HF_PARTS: dict[str, tuple[str, ...]] = {
    "qkv": ("q", "k", "v"), "fc1": ("gate", "up"),
    **{r: (r,) for r in ("embedding", "final_norm", "output", "input_norm", "mlp_norm", "proj", "fc2")},
}
LAYER_PARTS = ("input_norm", "q", "k", "v", "proj", "mlp_norm", "gate", "up", "fc2")
SUPPORTED_TYPES = ("llama", "mistral")
#: config lists with one entry per layer
LAYER_LISTS = ("layer_types", "no_rope_layers")


def hf_name(part: str, layer: int | None = None) -> str:
    """The HF tensor name of `part` (in layer `layer`)."""
    return HF_NAMES[part].format(i=layer)


def hf_shapes(config: dict[str, Any], tp: int, divisible_by: int) -> tuple[Shapes, int, bool]:
    """(shapes, unpadded vocab, tied) of a LLaMA config, checked against Megatron's limits."""
    if config.get("model_type") not in SUPPORTED_TYPES:
        raise ArchitectureError(f"megatron export supports model_type {' or '.join(SUPPORTED_TYPES)}, not {config.get('model_type')!r}")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ArchitectureError("megatron export supports LLaMA without biases; this config has attention_bias or mlp_bias")
    if config.get("sliding_window") is not None and config.get("use_sliding_window", True):
        raise ArchitectureError("megatron export: this config uses sliding-window attention, which Megatron's GPT args do not describe")
    if config.get("hidden_act", "silu") != "silu":
        raise ArchitectureError(f"megatron export supports SwiGLU (hidden_act silu), not {config.get('hidden_act')!r}")
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    vocab = int(config["vocab_size"])
    shapes = Shapes(
        layers=int(config["num_hidden_layers"]), hidden=hidden, ffn=int(config["intermediate_size"]), heads=heads,
        groups=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads), padded_vocab=padded_vocab(vocab, tp, divisible_by),
    )
    if shapes.heads % shapes.groups:
        raise ArchitectureError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {shapes.groups}")
    shapes.check_tp(tp)
    return shapes, vocab, bool(config.get("tie_word_embeddings", False))


def part_shape(part: str, shapes: Shapes, vocab: int) -> tuple[int, ...]:
    """The HF shape of `part`."""
    h, d = shapes.hidden, shapes.head_dim
    return {
        "embedding": (vocab, h), "output": (vocab, h), "final_norm": (h,), "input_norm": (h,), "mlp_norm": (h,),
        "q": (shapes.heads * d, h), "k": (shapes.groups * d, h), "v": (shapes.groups * d, h),
        "proj": (h, shapes.heads * d), "gate": (shapes.ffn, h), "up": (shapes.ffn, h), "fc2": (h, shapes.ffn),
    }[part]


class HFReader:
    """Raw, memory-mapped access to the tensors of a validated HF LLaMA checkpoint."""

    def __init__(self, ckpt: Checkpoint, shapes: Shapes, vocab: int, tied: bool) -> None:
        self.ckpt, self.shapes, self.vocab, self.tied = ckpt, shapes, vocab, tied
        self._blobs: dict[str, Blob] = {}
        expected = {hf_name("embedding"), hf_name("final_norm")} | {
            hf_name(p, i) for i in range(shapes.layers) for p in LAYER_PARTS
        }
        if not tied:
            expected.add(hf_name("output"))
        names = set(ckpt.tensors)
        if tied and hf_name("output") in names:
            names.discard(hf_name("output"))  # a tied copy; the embedding is the one exported
        missing, extra = sorted(expected - names), sorted(names - expected)
        if missing:
            raise ArchitectureError(f"HF checkpoint lacks {missing[0]} (and {len(missing) - 1} more); it is not a complete LLaMA")
        if extra:
            raise ArchitectureError(f"HF tensor {extra[0]!r} has no place in a Megatron LLaMA (biases, norms or extras are not supported)")
        for name in expected:
            ref = ckpt.tensors[name]
            layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
            part = next(p for p in HF_NAMES if hf_name(p, layer) == name)
            if ref.shape != part_shape(part, shapes, vocab):
                raise CheckpointError(f"{name} has shape {list(ref.shape)}, config.json implies {list(part_shape(part, shapes, vocab))}")

    def raw(self, part: str, layer: int | None = None) -> np.ndarray:
        """Raw elements of one HF tensor (a read-only view of the mapped shard)."""
        ref = self.ckpt.tensors[hf_name(part, layer)]
        if ref.file not in self._blobs:
            self._blobs[ref.file] = self.ckpt.storage.open_blob(ref.file)
        data = self._blobs[ref.file].read(ref.offset, ref.nbytes)
        return np.frombuffer(data, dtype=raw_dtype(ref.dtype)).reshape(ref.shape)

    def dtype(self, role: str, layer: int | None = None) -> str:
        """The dtype of the HF tensor(s) behind a Megatron role; QKV and fc1 parts must agree."""
        dtypes = {self.ckpt.tensors[hf_name(p, layer)].dtype for p in HF_PARTS[role]}
        if len(dtypes) != 1:
            raise CheckpointError(f"{role} of layer {layer}: its HF parts have different dtypes {sorted(dtypes)}")
        return dtypes.pop()

    def reader(self, role: str, layer: int | None = None) -> SegmentReader:
        """Whole-model segments of the Megatron tensor `role`, built from HF tensors."""
        if role in ("embedding", "output"):
            return vocab_reader([self.raw(role)], self.vocab)
        if role == "qkv":
            return qkv_from_hf(self.raw("q", layer), self.raw("k", layer), self.raw("v", layer), self.shapes)
        if role == "fc1":
            gate, up = self.raw("gate", layer), self.raw("up", layer)
            return lambda seg, start, end: (gate if seg == 0 else up)[start:end]
        tensor = self.raw(role, layer)
        if role in ("proj", "fc2"):
            return lambda _seg, start, end: tensor[:, start:end]
        return lambda _seg, start, end: tensor

    def close(self) -> None:
        """Release the mapped shards."""
        for blob in self._blobs.values():
            blob.close()
        self._blobs.clear()


def import_config(original: dict[str, Any], shapes: Shapes, vocab: int, tied: bool, eps: float,
                  dtype: str, hf_layers: list[int]) -> dict[str, Any]:
    """The HF config for the Megatron model: `original` (or a fresh LLaMA config) with its sizes."""
    config: dict[str, Any] = json.loads(json.dumps(original)) if original else {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "dtype": {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}[dtype],
    }
    before = int(config.get("num_hidden_layers", len(hf_layers)))
    for key in LAYER_LISTS:  # per-layer lists follow the kept layers
        value = config.get(key)
        if isinstance(value, list) and len(value) == before and before != len(hf_layers):
            config[key] = [value[i] for i in hf_layers]
    config.update({
        "hidden_size": shapes.hidden, "intermediate_size": shapes.ffn, "num_attention_heads": shapes.heads,
        "num_key_value_heads": shapes.groups, "num_hidden_layers": shapes.layers, "head_dim": shapes.head_dim,
        "vocab_size": vocab, "tie_word_embeddings": tied,
    })
    if original.get("rms_norm_eps") != eps:
        config["rms_norm_eps"] = eps
    return config
