"""Magnitude scores: the L2 norm of every unit of every pruned space, computed by streaming.

A unit's score is the sum of squares of every weight that carries it, along its axis, over
all tensors of its scope (e.g. a query head: its q rows and its o_proj columns).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .arch import Architecture
from .checkpoint import Checkpoint
from .dtypes import raw_dtype, to_float32
from .quant import quant_format
from .sizes import segment_width


def compute_scores(
    ckpt: Checkpoint, arch: Architecture, sizes: dict[str, int], spaces: set[str],
    layers: list[int], block_bytes: int = 64 << 20,
) -> dict[tuple[str, str], np.ndarray]:
    """Sum of squared weights per unit, keyed by (space, scope key), for `spaces`."""
    scores: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(0))
    extra = sizes.get(arch.extra_layers, 0) if arch.extra_layers else 0  # MTP layers: always kept, scored too
    kept_layers = set(layers) | set(range(sizes["layers"], sizes["layers"] + extra))
    blobs = {}
    try:
        quant = quant_format(ckpt.config, False)
        for ref in ckpt.tensors.values():
            if quant and quant.is_scale(ref.name, ckpt):
                continue  # FP8 block scales: scores use the stored codes (blocks share a scale)
            claim = arch.claim(ref.name, sizes, ckpt.config)
            if claim is None:
                continue
            role, binding = claim
            if "layer" in binding and binding["layer"] not in kept_layers:
                continue
            wanted = [(a, axis) for a, axis in enumerate(role.axes) if any(s.space in spaces for s in axis)]
            if not wanted or ref.numel == 0:
                continue
            blob = blobs.get(ref.file) or blobs.setdefault(ref.file, ckpt.storage.open_blob(ref.file))
            per_axis = _axis_sums(blob, ref, [a for a, _ in wanted], block_bytes)
            for a, axis in wanted:
                offset = 0
                for seg in axis:
                    size = sizes[seg.space] * segment_width(arch, seg, sizes) if seg.space in arch.spaces else sizes.get(seg.space, 0)
                    if seg.space in spaces:
                        space = arch.spaces[seg.space]
                        key = ".".join(str(binding[p]) for p in space.per)
                        units = per_axis[a][offset : offset + size].reshape(sizes[seg.space], -1).sum(axis=1)
                        acc = scores[(seg.space, key)]
                        scores[(seg.space, key)] = units if acc.size == 0 else acc + units
                    offset += size
            blob.release(ref.offset, ref.nbytes)
    finally:
        for blob in blobs.values():
            blob.close()
    return dict(scores)


def _axis_sums(blob, ref, axes: list[int], block_bytes: int) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
    raw = np.frombuffer(blob.read(ref.offset, ref.nbytes), dtype=raw_dtype(ref.dtype)).reshape(ref.shape)
    sums = {a: np.zeros(ref.shape[a], dtype=np.float64) for a in axes}
    rows = ref.shape[0]
    step = max(1, block_bytes // max(1, ref.nbytes // max(rows, 1)))
    for start in range(0, rows, step):
        block = to_float32(raw[start : start + step], ref.dtype).astype(np.float64) ** 2
        for a in axes:
            others = tuple(i for i in range(block.ndim) if i != a)
            part = block.sum(axis=others) if others else block
            if a == 0:
                sums[0][start : start + len(part)] += part
            else:
                sums[a] += part
    return sums
