"""The Megatron-core tensor layout of a LLaMA-style GPT: names, sizes and tensor-parallel slicing.

Everything here works on *raw* numpy arrays (unsigned ints of the dtype's width), so moving
a tensor between Hugging Face and Megatron form never changes a bit.  Every Megatron tensor
has a *role*; a role knows its tensor-parallel split axis and its *segments* (SwiGLU fc1 has
two, gate and up, each split across ranks; the rest have one).  A rank holds, per segment, a
contiguous slice of the split axis, concatenated in segment order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ArchitectureError, CheckpointError, SpecError

#: role -> (split axis or None when replicated, number of segments)
SPLIT: dict[str, tuple[int | None, int]] = {
    "embedding": (0, 1), "output": (0, 1), "qkv": (0, 1), "fc1": (0, 2),
    "proj": (1, 1), "fc2": (1, 1),
    "input_norm": (None, 1), "mlp_norm": (None, 1), "final_norm": (None, 1),
}
LAYER_ROLES = ("input_norm", "qkv", "proj", "mlp_norm", "fc1", "fc2")
NORM_ROLES = ("input_norm", "mlp_norm", "final_norm")

#: names written, per layer spec ({i} is the layer number); "te" is Megatron-LM's default
#: (norms fused into TransformerEngine linears), "local" is the non-TE layer spec
WRITE_NAMES: dict[str, dict[str, str]] = {
    "te": {
        "input_norm": "decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight",
        "mlp_norm": "decoder.layers.{i}.mlp.linear_fc1.layer_norm_weight",
    },
    "local": {
        "input_norm": "decoder.layers.{i}.input_layernorm.weight",
        "mlp_norm": "decoder.layers.{i}.pre_mlp_layernorm.weight",
    },
}
COMMON_NAMES = {
    "embedding": "embedding.word_embeddings.weight",
    "qkv": "decoder.layers.{i}.self_attention.linear_qkv.weight",
    "proj": "decoder.layers.{i}.self_attention.linear_proj.weight",
    "fc1": "decoder.layers.{i}.mlp.linear_fc1.weight",
    "fc2": "decoder.layers.{i}.mlp.linear_fc2.weight",
    "final_norm": "decoder.final_layernorm.weight",
    "output": "output_layer.weight",
}
#: `_extra_state` entries a strict `load_state_dict` expects (None is accepted by both specs)
EXTRA_STATES: dict[str, tuple[str, ...]] = {
    "te": ("self_attention.core_attention", "self_attention.linear_qkv", "self_attention.linear_proj",
           "mlp.linear_fc1", "mlp.linear_fc2"),
    "local": ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2"),
}

#: names read: mcore (either spec) and the older `language_model.*` layout
_LEGACY = "language_model.encoder.layers.{i}."
READ_NAMES: dict[str, tuple[str, ...]] = {
    "embedding": (COMMON_NAMES["embedding"], "language_model.embedding.word_embeddings.weight"),
    "output": (COMMON_NAMES["output"], "language_model.output_layer.weight"),
    "final_norm": (COMMON_NAMES["final_norm"], "language_model.encoder.final_norm.weight",
                   "language_model.encoder.final_layernorm.weight"),
    "input_norm": (WRITE_NAMES["te"]["input_norm"], WRITE_NAMES["local"]["input_norm"],
                   _LEGACY + "input_norm.weight", _LEGACY + "input_layernorm.weight"),
    "mlp_norm": (WRITE_NAMES["te"]["mlp_norm"], WRITE_NAMES["local"]["mlp_norm"],
                 _LEGACY + "post_attention_norm.weight", _LEGACY + "post_attention_layernorm.weight"),
    "qkv": (COMMON_NAMES["qkv"], _LEGACY + "self_attention.query_key_value.weight"),
    "proj": (COMMON_NAMES["proj"], _LEGACY + "self_attention.dense.weight"),
    "fc1": (COMMON_NAMES["fc1"], _LEGACY + "mlp.dense_h_to_4h.weight"),
    "fc2": (COMMON_NAMES["fc2"], _LEGACY + "mlp.dense_4h_to_h.weight"),
}
#: state-dict entries that hold no weights: skipped when reading
_IGNORED = re.compile(r"(^|\.)_extra_state$|(^|\.)rotary_pos_emb\.inv_freq$")
_PATTERNS = [
    (re.compile("^" + re.escape(t).replace(re.escape("{i}"), r"(\d+)") + "$"), role)
    for role, templates in READ_NAMES.items() for t in templates
]


def write_name(role: str, spec: str, layer: int | None = None) -> str:
    """The mcore state-dict key of `role` (in layer `layer`) for the layer spec `spec`."""
    template = WRITE_NAMES[spec].get(role) or COMMON_NAMES[role]
    return template.format(i=layer)


def parse_name(key: str) -> tuple[str, int | None] | None:
    """(role, layer) of a state-dict key, None for weightless entries; raise on unknown keys."""
    if _IGNORED.search(key):
        return None
    for pattern, role in _PATTERNS:
        match = pattern.match(key)
        if match:
            return role, int(match.group(1)) if match.groups() else None
    raise ArchitectureError(
        f"Megatron tensor {key!r} is not part of a LLaMA-style GPT (no biases, SwiGLU, RMSNorm); "
        "this checkpoint's architecture is not supported"
    )


def padded_vocab(vocab: int, tp: int, divisible_by: int = 128) -> int:
    """The vocabulary size Megatron pads to: a multiple of `divisible_by * tp`."""
    if tp < 1 or divisible_by < 1:
        raise SpecError(f"TP size and make-vocab-size-divisible-by must be at least 1, got {tp} and {divisible_by}")
    multiple = divisible_by * tp
    return -(-vocab // multiple) * multiple


@dataclass(frozen=True)
class Shapes:
    """The sizes that fix every tensor shape of a LLaMA-style GPT."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    groups: int  # query groups = key/value heads
    head_dim: int
    padded_vocab: int

    @property
    def per_group(self) -> int:
        """Query heads per query group."""
        return self.heads // self.groups

    def params(self, tied: bool) -> int:
        """Parameters of the model: QKV, projection, SwiGLU fc1/fc2 and two norms per layer; embedding,
        output layer (untied) and final norm."""
        qkv = (self.heads + 2 * self.groups) * self.head_dim * self.hidden
        layer = qkv + self.hidden * self.heads * self.head_dim + 3 * self.ffn * self.hidden + 2 * self.hidden
        return self.layers * layer + self.padded_vocab * self.hidden * (1 if tied else 2) + self.hidden

    def segment_length(self, role: str) -> int:
        """Length of one segment of `role` along its split axis (whole model)."""
        return {
            "embedding": self.padded_vocab, "output": self.padded_vocab,
            "qkv": self.groups * (self.per_group + 2) * self.head_dim,
            "proj": self.heads * self.head_dim, "fc1": self.ffn, "fc2": self.ffn,
        }[role]

    def full_shape(self, role: str) -> tuple[int, ...]:
        """Shape of `role` in the whole (TP=1) model."""
        if role in NORM_ROLES:
            return (self.hidden,)
        if role == "fc1":
            return (2 * self.ffn, self.hidden)
        length = self.segment_length(role)
        return (self.hidden, length) if SPLIT[role][0] == 1 else (length, self.hidden)

    def rank_shape(self, role: str, tp: int) -> tuple[int, ...]:
        """Shape of `role` on one of `tp` ranks."""
        shape = list(self.full_shape(role))
        axis = SPLIT[role][0]
        if axis is not None:
            shape[axis] //= tp
        return tuple(shape)

    def check_tp(self, tp: int) -> None:
        """Raise unless every split dimension divides by `tp`."""
        if tp < 1:
            raise SpecError(f"tensor-parallel size must be at least 1, got {tp}")
        for what, size in (("attention heads", self.heads), ("query groups (kv heads)", self.groups),
                           ("ffn_hidden_size", self.ffn), ("padded vocabulary", self.padded_vocab)):
            if size % tp:
                raise ArchitectureError(f"{what} = {size} is not divisible by TP size {tp}; choose a TP size that divides it")


def take_range(pieces: list[np.ndarray], axis: int, start: int, end: int) -> np.ndarray:
    """Positions [start, end) along `axis` of the concatenation of `pieces` (a view when one piece holds them)."""
    parts, offset = [], 0
    for piece in pieces:
        n = piece.shape[axis]
        lo, hi = max(start, offset), min(end, offset + n)
        if lo < hi:
            parts.append(piece[(slice(None),) * axis + (slice(lo - offset, hi - offset),)])
        offset += n
    if offset < end:
        raise CheckpointError(f"internal error: asked for positions up to {end} of {offset}")
    return np.concatenate(parts, axis=axis) if len(parts) != 1 else parts[0]


#: (segment, start, end) -> positions [start, end) of that segment along the split axis
SegmentReader = Callable[[int, int, int], np.ndarray]


def rank_part(role: str, shapes: Shapes, tp: int, rank: int, read: SegmentReader) -> np.ndarray:
    """The raw tensor of `role` that rank `rank` of `tp` holds, built from whole-model segments."""
    axis, segments = SPLIT[role]
    if axis is None:
        return np.array(read(0, 0, shapes.hidden), copy=True)
    length = shapes.segment_length(role)
    if length % tp:
        raise ArchitectureError(f"{role}: {length} positions are not divisible by TP size {tp}")
    chunk = length // tp
    parts = [read(seg, rank * chunk, (rank + 1) * chunk) for seg in range(segments)]
    return np.ascontiguousarray(np.concatenate(parts, axis=axis) if segments > 1 else parts[0])


def rank_segments(role: str, local: np.ndarray) -> list[np.ndarray]:
    """Split one rank's tensor of `role` into its segments (views)."""
    axis, segments = SPLIT[role]
    if axis is None or segments == 1:
        return [local]
    return np.split(local, segments, axis=axis)


def vocab_reader(pieces: list[np.ndarray], vocab: int) -> SegmentReader:
    """Rows of the padded embedding: real rows from `pieces`, padding repeats the last real row.

    Megatron's own converters pad this way; the padding rows never reach a Hugging Face model.
    """
    def read(_seg: int, start: int, end: int) -> np.ndarray:
        real = take_range(pieces, 0, start, min(end, vocab)) if start < vocab else None
        pad = end - max(start, vocab)
        if pad <= 0:
            return real  # type: ignore[return-value]
        last = take_range(pieces, 0, vocab - 1, vocab)
        filler = np.repeat(last, pad, axis=0)
        return filler if real is None else np.concatenate([real, filler], axis=0)

    return read


def qkv_from_hf(q: np.ndarray, k: np.ndarray, v: np.ndarray, shapes: Shapes) -> SegmentReader:
    """Rows of mcore's grouped QKV ([q heads of group g; k_g; v_g] for each group g) from HF q, k, v."""
    d, r, hidden = shapes.head_dim, shapes.per_group, q.shape[1]
    block = (r + 2) * d
    qg = q.reshape(shapes.groups, r * d, hidden)
    kg = k.reshape(shapes.groups, d, hidden)
    vg = v.reshape(shapes.groups, d, hidden)

    def read(_seg: int, start: int, end: int) -> np.ndarray:
        if start % block or end % block:
            raise CheckpointError("internal error: QKV rows must be read in whole query groups")
        g0, g1 = start // block, end // block
        return np.concatenate([qg[g0:g1], kg[g0:g1], vg[g0:g1]], axis=1).reshape(-1, hidden)

    return read


def qkv_to_hf(qkv: np.ndarray, shapes: Shapes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a whole grouped QKV weight back into HF q_proj, k_proj, v_proj (views)."""
    d, r = shapes.head_dim, shapes.per_group
    grouped = qkv.reshape(shapes.groups, (r + 2) * d, qkv.shape[1])
    q = grouped[:, : r * d].reshape(shapes.heads * d, -1)
    k = grouped[:, r * d : (r + 1) * d].reshape(shapes.groups * d, -1)
    v = grouped[:, (r + 1) * d :].reshape(shapes.groups * d, -1)
    return q, k, v
