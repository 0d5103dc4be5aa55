"""The peak memory of a refit, known at plan time (numpy only).

Per layer the Grams of every reader group live together (float64, a training and a held-out
copy; sequential mode adds the dense x pruned cross sums; an expert stack has one per kept
expert), beside the layer's weights in float32 (two layers in sequential mode) and the residual
streams of the calibration windows.  The
solve of the largest reader adds its kept Gram and a Cholesky factor.  The plan refuses a refit
whose peak exceeds the memory this machine has available.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import SpecError


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (physical memory where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def refit_peak(plan: Any, windows: int, seq_len: int, mode: str) -> int:
    """Bytes a refit of `plan` holds at its peak (see module doc)."""
    layer_of: dict[str, int] = {}
    weights: dict[int, int] = {}
    for t in plan.tensors:
        layer = t.source.name.split(".layers.")[1].split(".")[0] if ".layers." in t.source.name else None
        if layer is not None and layer.isdigit():
            layer_of[t.source.name] = int(layer)
            weights[int(layer)] = weights.get(int(layer), 0) + t.source.numel * 4
    grams: dict[int, int] = {}
    solve = 0
    for t in plan.tensors:
        if t.source.name not in layer_of:
            continue
        if len(t.index) == 2 and any(i is not None for i in t.index):
            axis = -1 if t.index[-1] is not None else 0  # axis 0: the input of a weight stored [in, out]
            n, kept = t.source.shape[axis], len(t.index[axis])
            size = (kept * kept + n * kept if mode == "sequential" else n * n) * 8 * 2
            rows = t.source.shape[1 + axis]
        elif len(t.index) == 3 and any(i is not None for i in t.index[1:]):
            # an [experts, a, b] stack: one training Gram per kept expert over its input, a or b,
            # and the whole stack in float64 while its slices are placed
            n = max(t.source.shape[1:])
            kept = n
            experts = len(t.index[0]) if t.index[0] is not None else t.source.shape[0]
            size = experts * n * n * 8 + t.source.numel * 8
            rows = n
        else:
            continue
        grams[layer_of[t.source.name]] = grams.get(layer_of[t.source.name], 0) + size
        solve = max(solve, 2 * kept * kept * 8 + rows * n * 8)
    if not grams:
        return 0
    hidden = plan.sizes["hidden"]
    streams = windows * seq_len * hidden * 4 * (2 if mode == "sequential" else 1)
    layer = max(weights.values(), default=0) * (2 if mode == "sequential" else 1)
    return max(grams.values()) + solve + layer + streams


def check_refit_memory(plan: Any, windows: int, seq_len: int, mode: str) -> int:
    """The refit's peak; SpecError when this machine has not that much memory available."""
    peak = refit_peak(plan, windows, seq_len, mode)
    free = available_bytes()
    if peak > free:
        raise SpecError(f"the refit needs about {peak / 2**30:.1f} GiB (largest layer's Grams, weights and streams) but "
                        f"{free / 2**30:.1f} GiB is available; use fewer --calibration-samples or a machine with more memory")
    return peak
