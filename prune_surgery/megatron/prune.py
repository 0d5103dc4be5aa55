"""Prune a Megatron checkpoint in place of its tensor-parallel layout ("balance" pruning).

Every rank keeps the same number of query groups, heads and ffn neurons, so every rank's
sub-model has the same shape and the TP size stays valid.  Each rank's tensors are sliced
with local indices; the result equals pruning the HF model with the same kept indices and
exporting it at the same TP size, byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..dtypes import from_float32, to_float32
from ..errors import SpecError
from ..keepfile import Keep, kept, normalize_keep
from ..output import atomic_folder, check_output
from .args import build_args
from .folder import SIDE_FILE, MegatronCheckpoint, copy_side, from_raw, is_megatron_checkpoint, read_checkpoint
from .layout import Shapes
from .writer import dist_args, write_megatron, write_train_args

__all__ = ["is_megatron_checkpoint", "prune_megatron"]

SPACES = ("layers", "hidden", "heads", "kv_heads", "ffn")


@dataclass(frozen=True)
class _LayerKeep:
    groups: list[int]
    heads: list[int]
    ffn: list[int]


def _checked(indices: list[int] | None, size: int, what: str) -> list[int]:
    if indices is None:
        return list(range(size))
    if not indices:
        raise SpecError(f"{what}: keeping nothing is not a model; keep at least one")
    if indices[-1] >= size:
        raise SpecError(f"{what}: index {indices[-1]} is out of range (size {size})")
    return list(indices)


def _per_rank(indices: list[int], size: int, tp: int) -> list[int]:
    return [sum(1 for i in indices if i * tp // size == rank) for rank in range(tp)]


def _layer_keep(keep: Keep, layer: int, shapes: Shapes, tp: int) -> _LayerKeep:
    scope, r = str(layer), shapes.per_group
    groups = _checked(kept(keep, "kv_heads", scope), shapes.groups, f"kv_heads of layer {layer}")
    heads = kept(keep, "heads", scope)
    heads = _checked(heads if heads is not None else [h for g in groups for h in range(g * r, (g + 1) * r)],
                     shapes.heads, f"heads of layer {layer}")
    stray = [h for h in heads if h // r not in groups]
    if stray:
        raise SpecError(f"layer {layer}: query head {stray[0]} belongs to kv group {stray[0] // r}, which is pruned")
    counts = {sum(1 for h in heads if h // r == g) for g in groups}
    if len(counts) != 1:
        raise SpecError(f"layer {layer}: kept kv groups keep {sorted(counts)} query heads; GQA needs the same number in each")
    ffn = _checked(kept(keep, "ffn", scope), shapes.ffn, f"ffn of layer {layer}")
    for what, indices, size in (("kv_heads", groups, shapes.groups), ("ffn", ffn, shapes.ffn)):
        per_rank = _per_rank(indices, size, tp)
        if len(set(per_rank)) != 1:
            raise SpecError(
                f"{what} of layer {layer} keeps {per_rank} per TP rank; Megatron pruning needs the same "
                f"count on every rank (select with --balance {tp})"
            )
    return _LayerKeep(groups, heads, ffn)


def _block_rows(units: list[int], width: int) -> np.ndarray:
    return (np.asarray(units, dtype=np.int64)[:, None] * width + np.arange(width)).reshape(-1)


class _RankSlicer:
    """Local row/column indices of one rank for every tensor, and the sliced tensors."""

    def __init__(self, ckpt: MegatronCheckpoint, layers: list[int], hidden: np.ndarray,
                 per_layer: dict[int, _LayerKeep], scale: float | None) -> None:
        self.ckpt, self.layers, self.hidden, self.per_layer, self.scale = ckpt, layers, hidden, per_layer, scale

    def local(self, rank: int, layer: int) -> dict[str, np.ndarray]:
        """Kept local rows of qkv and fc1, kept local columns of proj and fc2."""
        s, tp, lk = self.ckpt.shapes, self.ckpt.tp, self.per_layer[layer]
        d, r = s.head_dim, s.per_group
        g_local, h_local, f_local = s.groups // tp, s.heads // tp, s.ffn // tp
        qkv: list[np.ndarray] = []
        for g in (g for g in lk.groups if g // g_local == rank):
            base = (g - rank * g_local) * (r + 2) * d
            in_group = [h - g * r for h in lk.heads if h // r == g]
            qkv += [base + _block_rows(in_group, d), base + r * d + np.arange(2 * d)]  # q heads; k; v
        heads = [h - rank * h_local for h in lk.heads if h // h_local == rank]
        ffn = np.asarray([f - rank * f_local for f in lk.ffn if f // f_local == rank], dtype=np.int64)
        return {"qkv": np.concatenate(qkv), "proj": _block_rows(heads, d), "fc1": np.concatenate([ffn, ffn + f_local]), "fc2": ffn}

    def tensor(self, rank: int, role: str, new_layer: int | None, *, local: dict[int, dict[str, np.ndarray]]) -> Any:
        """The pruned tensor of `role` on `rank` (`new_layer` is the output layer number)."""
        layer = None if new_layer is None else self.layers[new_layer]
        ckpt, hidden = self.ckpt, self.hidden
        dtype = ckpt.dtype(role, layer)
        if role in ("input_norm", "mlp_norm", "final_norm"):
            return from_raw(self._scaled(ckpt.norm(role, layer)[hidden], role, dtype), dtype)
        raw = ckpt.raw(rank, role, layer)
        if role in ("embedding", "output"):
            return from_raw(self._scaled(raw[:, hidden], role, dtype), dtype)
        index = local[layer][role]  # type: ignore[index]
        picked = raw[np.ix_(index, hidden)] if role in ("qkv", "fc1") else raw[np.ix_(hidden, index)]
        return from_raw(self._scaled(picked, role, dtype), dtype)

    def _scaled(self, raw: np.ndarray, role: str, dtype: str) -> np.ndarray:
        """The engine's residual-stream rule (hiddenrule.hidden_factor), `self.scale` = sqrt(d/d') = 1/c:
        what writes the stream (embedding, proj, fc2) times c, the norms reading it times 1/c,
        the final norm once more when the output layer is the (scaled) embedding."""
        if self.scale is None or role in ("qkv", "fc1") or (role == "output" and not self.ckpt.tied):
            return raw
        factor = 1 / self.scale if role in ("embedding", "output", "proj", "fc2") else self.scale
        if role == "final_norm" and self.ckpt.tied:
            factor /= 1 / self.scale
        return from_float32(to_float32(raw, dtype) * np.float32(factor), dtype)


def _needed_bytes(ckpt: Any, before: Shapes, after: Shapes) -> int:
    """Bytes the pruned checkpoint will take: the source's files scaled by the parameters kept
    (each file holds its tensors and a little pickle framing, so the ratio carries over), plus 1 MiB."""
    files = [f for p in ckpt.location.rank_files for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    return int(total * after.params(ckpt.tied) / max(before.params(ckpt.tied), 1)) + (1 << 20)


def prune_megatron(src: Path, out: Path, keep: dict[str, Any], *, norm_rescale: bool = True,
                   train_tp: int | None = None, overwrite: bool = False) -> None:
    """Apply the kept indices `keep` (the engine's keep object) to every rank of the Megatron checkpoint at `src`.

    Refuses (SpecError) spaces it cannot prune in Megatron form (vocab, experts), per-layer
    sizes that differ between layers, and selections that keep a different number of kv
    groups or ffn neurons on different TP ranks.  Hidden pruning keeps the norm epsilon and
    scales the residual stream by sqrt(d'/d) (the engine's rule, hiddenrule.hidden_factor) unless
    `norm_rescale` is false.  A torch_dist checkpoint is pruned as one whole-model rank and
    written as torch_dist; `train_tp` is the TP size its ``train_args.sh`` names (the pruned
    sizes must divide by it; ignored for rank files).
    """
    keep = normalize_keep(keep)
    unknown = sorted(set(keep) - set(SPACES))
    if unknown:
        raise SpecError(f"Megatron pruning supports the spaces {', '.join(SPACES)}, not {', '.join(unknown)}")
    ckpt = read_checkpoint(Path(src))
    s, tp = ckpt.shapes, ckpt.tp
    layers = _checked(kept(keep, "layers"), s.layers, "layers")
    hidden = np.asarray(_checked(kept(keep, "hidden"), s.hidden, "hidden"), dtype=np.int64)
    per_layer = {layer: _layer_keep(keep, layer, s, tp) for layer in layers}
    for what, size in (("kv_heads", lambda k: len(k.groups)), ("heads", lambda k: len(k.heads)), ("ffn", lambda k: len(k.ffn))):
        sizes = {size(k) for k in per_layer.values()}
        if len(sizes) != 1:
            raise SpecError(f"{what}: kept layers keep {sorted(sizes)}; Megatron needs the same count in every layer")
    first = per_layer[layers[0]]
    shapes = Shapes(len(layers), len(hidden), len(first.ffn), len(first.heads), len(first.groups), s.head_dim, s.padded_vocab)
    out_tp = (train_tp or 1) if ckpt.location.dist else tp  # rank files keep their TP size
    shapes.check_tp(out_tp)
    rescale = norm_rescale and shapes.hidden != s.hidden
    eps = ckpt.eps
    slicer = _RankSlicer(ckpt, layers, hidden, per_layer, math.sqrt(s.hidden / shapes.hidden) if rescale else None)
    check_output(Path(out), ckpt.location.root, overwrite)
    iteration = ckpt.location.iteration
    spec = "te" if ckpt.spec in ("legacy", "dist") else ckpt.spec
    divisible_by = int(ckpt.side.get("make_vocab_size_divisible_by", ckpt.args.get("make_vocab_size_divisible_by", 128)))
    fmt = "torch_dist" if ckpt.location.dist else "torch"
    args = dist_args(build_args(ckpt.args, shapes, tp=out_tp, tied=ckpt.tied, eps=eps,
                                dtype=ckpt.dtype("embedding"), spec=spec, divisible_by=divisible_by), fmt)
    side = dict(ckpt.side)
    if side:
        side["hf_layers"] = [list(side.get("hf_layers", range(s.layers)))[i] for i in layers]
    local = {rank: {layer: slicer.local(rank, layer) for layer in layers} for rank in range(tp)}
    with atomic_folder(Path(out), needed=_needed_bytes(ckpt, s, shapes)) as tmp:
        write_megatron(tmp, fmt, args, iteration, shapes, spec, ckpt.tied,
                       lambda rank, role, layer: slicer.tensor(rank, role, layer, local=local[rank]))
        copy_side(ckpt.location.root, tmp, side)
        write_train_args(tmp, Path(out), args, ckpt.vocab)
        record = {"tool": "prune-surgery megatron", "source": str(ckpt.location.root), "tp": tp,
                  "norm_rescale": norm_rescale, "keep": keep, "side_file": SIDE_FILE if side else None}
        (tmp / "prune_surgery.json").write_text(json.dumps(record, indent=1) + "\n")
