"""Megatron torch_dist checkpoints: read one (no process group, no megatron) and write one.

Layout (Megatron-LM; NeMo 2 keeps the same files under ``weights/`` with a ``module.`` prefix)::

    ROOT/latest_checkpointed_iteration.txt
    ROOT/iter_0000001/metadata.json     {"sharded_backend": "torch_dist", ...}
    ROOT/iter_0000001/common.pt         args, iteration, checkpoint_version (no tensors)
    ROOT/iter_0000001/.metadata         DCP metadata: global shapes, chunks, byte ranges
    ROOT/iter_0000001/__0_0.distcp      the chunks, each a torch.save blob

Tensors have their whole-model (TP=1) shape: layers are stacked on a leading axis
(``decoder.layers.self_attention.linear_qkv.weight`` is [layers, rows, hidden]), SwiGLU fc1 is
[gate_all; up_all] and QKV is group-major, so the files do not depend on the TP size; only the
vocabulary padding does.  A layer's tensor is read from its chunks alone.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import raw_dtype
from ..errors import ArchitectureError, CheckpointError
from .distmeta import CONFIG, DistMetadata, DistTensor, load_chunk, read_metadata
from .folder import SIDE_FILE, Location, MegatronCheckpoint, to_raw
from .layout import EXTRA_STATES, LAYER_ROLES, Shapes, parse_name
from .safeload import load_rank_file, plain

_UNSUPPORTED = (
    (re.compile(r"\.mlp\.(experts|router|shared_experts)\."), "MoE (mixture-of-experts) Megatron models are not supported"),
    (re.compile(r"\.(mixer|mamba)\.|^decoder\.layers\.\d*\.?(mixer|mamba)"), "hybrid (Mamba) Megatron models are not supported"),
)
_SKIPPED = re.compile(r"^(optimizer|rng_state|rerun_state_machine|opt_param_scheduler)(\.|$)")


def _role_of(key: str) -> tuple[str, bool, int | None] | None:
    """(role, stacked, layer) of a model key; None for weightless entries."""
    for pattern, what in _UNSUPPORTED:
        if pattern.search(key):
            raise ArchitectureError(f"{what} ({key}); prune-surgery reads dense LLaMA-style GPTs")
    stacked = key.startswith("decoder.layers.") and not key[len("decoder.layers."):][:1].isdigit()
    parsed = parse_name("decoder.layers.0." + key[len("decoder.layers."):] if stacked else key)
    if parsed is None:
        return None
    return parsed[0], stacked, None if stacked else parsed[1]


class DistCheckpoint(MegatronCheckpoint):
    """A torch_dist checkpoint seen as one TP rank; tensors are read from their chunks on demand."""

    entries: dict[tuple[str, int | None], tuple[DistTensor, int | None]]
    _last: tuple[tuple[str, int | None], np.ndarray] | None = None

    @property
    def tp(self) -> int:
        """Always 1: torch_dist tensors have their whole-model shape."""
        return 1

    def dtype(self, role: str, layer: int | None = None) -> str:
        """The dtype name of a tensor."""
        return self.entries[(role, layer)][0].dtype

    def raw(self, rank: int, role: str, layer: int | None = None) -> np.ndarray:
        """Raw elements of one layer's tensor, assembled from its chunks (the last one is kept)."""
        if self._last is not None and self._last[0] == (role, layer):
            return self._last[1]
        tensor, index = self.entries[(role, layer)]
        shape = tensor.shape if index is None else tensor.shape[1:]
        out = np.empty(shape, dtype=raw_dtype(tensor.dtype))
        filled = 0
        for chunk in tensor.chunks:
            offsets, sizes = chunk.offsets, chunk.sizes
            if index is not None:
                if not offsets[0] <= index < offsets[0] + sizes[0]:
                    continue
                part = to_raw(load_chunk(self.dist, chunk)[index - offsets[0]])
                offsets = offsets[1:]
            else:
                part = to_raw(load_chunk(self.dist, chunk))
            out[tuple(slice(o, o + s) for o, s in zip(offsets, part.shape))] = part
            filled += part.size
        if filled != out.size:
            raise CheckpointError(f"{self.dist}: the chunks of {tensor.key} (layer {index}) do not cover it; the checkpoint is incomplete")
        self._last = ((role, layer), out)
        return out

    @property
    def dist(self) -> Path:
        """The folder with .metadata and the .distcp files."""
        return self.location.rank_files[0]


def _common(folder: Path) -> dict[str, Any]:
    path = folder / "common.pt"
    if not path.is_file():
        return {}
    return load_rank_file(path)


def read_dist(location: Location, vocab_size: int | None = None) -> DistCheckpoint:
    """Open the torch_dist checkpoint at `location` (its dist folder is ``location.rank_files[0]``)."""
    folder = location.rank_files[0]
    meta: DistMetadata = read_metadata(folder)
    entries: dict[tuple[str, int | None], tuple[DistTensor, int | None]] = {}
    prefixes = {key.split(".", 1)[0] for key in meta.tensors}
    strip = "module." if "module" in prefixes and not prefixes & {"embedding", "decoder"} else ""
    for key, tensor in meta.tensors.items():
        name = key[len(strip):] if key.startswith(strip) else key
        if _SKIPPED.match(name):
            continue
        parsed = _role_of(name)
        if parsed is None:
            continue
        role, stacked, layer = parsed
        if stacked:
            for i in range(tensor.shape[0]):
                entries[(role, i)] = (tensor, i)
        else:
            entries[(role, layer)] = (tensor, None)
    if not entries:
        what = "optimizer state only (a distributed-optimizer or optimizer-only save)" if meta.tensors else "no tensors"
        raise CheckpointError(f"{folder}: torch_dist checkpoint holds {what}, no model weights; give a checkpoint saved with the model")
    if ("embedding", None) not in entries:
        raise CheckpointError(f"{folder}: no embedding.word_embeddings.weight; the checkpoint is not a whole GPT model")
    common = _common(folder)
    raw_args = common.get("args")
    args = {k: v for k, v in (vars(raw_args) if hasattr(raw_args, "__dict__") else raw_args or {}).items() if plain(v)}
    args.update({k: v for k, v in _nemo_config(location.root).items() if k not in args})
    shapes, tied = _shapes(entries, args, folder)
    side_path = location.root / SIDE_FILE
    side = json.loads(side_path.read_text()) if side_path.is_file() else {}
    eps = args.get("norm_epsilon") or args.get("layernorm_epsilon") or 1e-5
    ckpt = DistCheckpoint(location, shapes, int(vocab_size or side.get("vocab_size", shapes.padded_vocab)), tied,
                          float(eps), "dist", args, side, [{}])
    ckpt.entries = entries
    _validate(ckpt)
    return ckpt


def _nemo_config(root: Path) -> dict[str, Any]:
    """Model sizes from a NeMo 2 ``context/model.yaml`` (its model config), when there is one."""
    path = root / "context" / "model.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: not readable YAML ({str(exc).splitlines()[0]})") from None
    config = tree.get("config", tree) if isinstance(tree, dict) else {}
    names = {"layernorm_epsilon": "norm_epsilon", "seq_length": "seq_length", "rotary_base": "rotary_base"}
    out = {names.get(k, k): v for k, v in config.items() if plain(v) and not str(k).startswith("_")}
    if "share_embeddings_and_output_weights" in config:
        out["untie_embeddings_and_output_weights"] = not config["share_embeddings_and_output_weights"]
    return out


def _shapes(entries: dict[tuple[str, int | None], tuple[DistTensor, int | None]], args: dict[str, Any],
            folder: Path) -> tuple[Shapes, bool]:
    def shape(role: str, layer: int | None) -> tuple[int, ...]:
        if (role, layer) not in entries:
            return (0, 0)  # reported by _validate
        tensor, index = entries[(role, layer)]
        return tensor.shape if index is None else tensor.shape[1:]

    layers = 1 + max((layer for _, layer in entries if layer is not None), default=-1)
    padded, hidden = shape("embedding", None)
    if not layers:
        raise CheckpointError(f"{folder}: the checkpoint has no transformer layers")
    if int(args.get("num_layers") or layers) != layers:
        raise CheckpointError(f"{folder}: args say num_layers={args['num_layers']} but the tensors hold {layers} layers")
    heads = int(args.get("num_attention_heads") or 0)
    if not heads:
        raise CheckpointError(f"{folder}: common.pt has no args with num_attention_heads (and no NeMo context/model.yaml); "
                              "the number of heads cannot be known from tensor shapes")
    groups = int(args.get("num_query_groups") or heads) if args.get("group_query_attention", True) else heads
    head_dim = int(args.get("kv_channels") or shape("proj", 0)[1] // heads)
    ffn = int(args.get("ffn_hidden_size") or shape("fc2", 0)[1])
    tied = ("output", None) not in entries
    return Shapes(layers, hidden, ffn, heads, groups, head_dim, padded), tied


def _validate(ckpt: DistCheckpoint) -> None:
    s = ckpt.shapes
    expected = {("embedding", None), ("final_norm", None)} | {(r, i) for i in range(s.layers) for r in LAYER_ROLES}
    expected |= set() if ckpt.tied else {("output", None)}
    missing, extra = sorted(expected - set(ckpt.entries), key=str), sorted(set(ckpt.entries) - expected, key=str)
    if missing or extra:
        what = f"lacks {missing[0][0]} of layer {missing[0][1]}" if missing else f"has an extra {extra[0][0]}"
        raise CheckpointError(f"{ckpt.dist}: the torch_dist checkpoint {what}; it is not a complete LLaMA-style GPT")
    for (role, layer), (tensor, index) in ckpt.entries.items():
        got = tensor.shape if index is None else tensor.shape[1:]
        if tuple(got) != s.full_shape(role):
            raise CheckpointError(f"{ckpt.dist}: {tensor.key} has shape {tuple(got)}, expected {s.full_shape(role)} from "
                                  "the args (SwiGLU LLaMA-style GPT); the checkpoint does not match its args")
    if not 0 < ckpt.vocab <= s.padded_vocab:
        raise CheckpointError(f"vocab_size {ckpt.vocab} must be between 1 and the padded vocabulary {s.padded_vocab}")


def _dist_key(role: str) -> str:
    """The stacked torch_dist key of a role (norm names as megatron-core maps them for both specs)."""
    name = {"input_norm": "decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight",
            "mlp_norm": "decoder.layers.{i}.mlp.linear_fc1.layer_norm_weight"}.get(role)
    from .layout import COMMON_NAMES

    return (name or COMMON_NAMES[role]).replace("{i}.", "")


def write_dist(folder: Path, shapes: Shapes, tied: bool, common: dict[str, Any],
               tensor: Callable[[str, int | None], Any]) -> None:
    """Write a torch_dist checkpoint into the (new) iteration folder `folder`.

    `tensor(role, layer)` gives each whole-model torch tensor; one is held at a time.
    `common` (args, iteration, checkpoint_version) goes to common.pt.
    """
    import torch
    from torch.distributed.checkpoint import metadata as dcp
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.json").write_text(json.dumps(CONFIG))
    torch.save(common, folder / "common.pt")
    state: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    data_file = "__0_0.distcp"
    roles: list[tuple[str, int | None]] = [("embedding", None)]
    roles += [(role, i) for role in LAYER_ROLES for i in range(shapes.layers)]
    roles += [("final_norm", None)] + ([] if tied else [("output", None)])
    with (folder / data_file).open("wb") as out:
        def put(key: str, blob: bytes, offset: tuple[int, ...] | None) -> None:
            index = dcp.MetadataIndex(key, None if offset is None else torch.Size(offset))
            storage[index] = _StorageInfo(data_file, out.tell(), len(blob))
            out.write(blob)

        for role, layer in roles:
            value = tensor(role, layer)
            key = _dist_key(role)
            if layer is not None:
                value = value.reshape(1, *value.shape)
            size = (shapes.layers, *value.shape[1:]) if layer is not None else tuple(value.shape)
            offset = (layer or 0, *([0] * (len(size) - 1))) if layer is not None else (0,) * len(size)
            buffer = io.BytesIO()
            torch.save(value, buffer)
            put(key, buffer.getvalue(), offset)
            entry = state.setdefault(key, dcp.TensorStorageMetadata(
                dcp.TensorProperties(dtype=value.dtype), torch.Size(size), []))
            entry.chunks.append(dcp.ChunkStorageMetadata(torch.Size(offset), torch.Size(value.shape)))
        empty = io.BytesIO()
        torch.save([None], empty)  # the _extra_state of a linear without FP8 state
        for i in range(shapes.layers):
            for module in EXTRA_STATES["te"]:
                key = f"decoder.layers.{module}._extra_state/shard_{i}_{shapes.layers}"
                put(key, empty.getvalue(), None)
                state[key] = dcp.BytesStorageMetadata()
    meta = dcp.Metadata(state_dict_metadata=state, storage_data=storage, version="1.0.0")
    with (folder / ".metadata").open("wb") as handle:
        pickle.dump(meta, handle)
