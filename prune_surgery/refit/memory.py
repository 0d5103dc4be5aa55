"""The peak memory of a refit, known at plan time (numpy only).

A layer is refit in three phases; the peak is the largest, beside the residual streams of the
calibration windows (two in sequential mode) and the interpreter with torch (``BASE_BYTES``):

1. **accumulate**: the layer's weights in float32 (two layers in sequential mode), the float64 sums
   of every refit reader (over all tokens and over the held-out windows: each n x n' for one-shot
   C[:, K], plus n' x n' where sequential mode pairs two streams of different width) and one
   micro-batch of float64 inputs;
2. **choose lambda**: the sums, copies of the refit weights, the probed rows' right-hand sides
   and two n' x n' matrices (torch's Cholesky factor is written beside its input);
3. **solve**: the sums over all tokens, the weights, and for the largest reader its float64
   weight or its right-hand side, result and two n' x n' matrices; the solved values of the layer
   wait to be written.

Measured on a Llama-3-70B-shaped layer (``bench/refit_memory.py``): see
``bench/results/refit_memory.md``.
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


BASE_BYTES = 1 << 30  # python, torch, transformers and the layer-by-layer model skeleton
MICRO_TOKENS = 4096  # tokens per micro-batch (calibrate.session.MICRO_TOKENS)
PROBE_ROWS = 2048  # output rows lambda is chosen on (solve.PROBE_ROWS; solve imports torch)


def refit_peak(plan: Any, windows: int, seq_len: int, mode: str) -> int:
    """Bytes a refit of `plan` holds at its peak (see module doc)."""
    weights: dict[int, int] = {}
    readers: dict[int, list[tuple[int, int, int]]] = {}  # layer -> (out, n, n') of each refit reader
    for t in plan.tensors:
        layer = t.source.name.split(".layers.")[1].split(".")[0] if ".layers." in t.source.name else None
        if layer is None or not layer.isdigit():
            continue
        weights[int(layer)] = weights.get(int(layer), 0) + t.source.numel * 4
        if len(t.index) == 2 and t.index[-1] is not None:
            out = len(t.index[0]) if t.index[0] is not None else t.source.shape[0]
            readers.setdefault(int(layer), []).append((out, t.source.shape[-1], len(t.index[-1])))
    if not readers:
        return 0
    pairs = mode == "sequential" and "hidden" in plan.keep  # streams of different width: C_yy beside C_xy
    f64 = 8
    peak = 0
    for layer, group in readers.items():
        total = sum((n * k + (k * k if pairs else 0)) * f64 for _, n, k in group)
        copies = sum(out * n * 4 for out, n, _ in group)
        micro = MICRO_TOKENS * max(n for _, n, _ in group) * f64 * 3
        accumulate = 2 * total + weights[layer] * (2 if mode == "sequential" else 1) + micro
        # torch's Cholesky writes a new n' x n' beside its input: two at once
        probe = max((2 * min(out, PROBE_ROWS) * (n + 2 * k) + 2 * k * k) * f64 for out, n, k in group)
        choose = 2 * total + copies + probe
        results = sum(out * k * f64 for out, _, k in group)
        solve = total + copies + results + max(max(out * n + out * k, 2 * k * k + out * k) * f64 for out, n, k in group)
        peak = max(peak, accumulate, choose, solve)
    streams = windows * seq_len * plan.sizes["hidden"] * 4 * (2 if mode == "sequential" else 1)
    return BASE_BYTES + streams + peak


def check_refit_memory(plan: Any, windows: int, seq_len: int, mode: str) -> int:
    """The refit's peak; SpecError when this machine has not that much memory available."""
    peak = refit_peak(plan, windows, seq_len, mode)
    free = available_bytes()
    if peak > free:
        raise SpecError(f"the refit needs about {peak / 2**30:.1f} GiB (largest layer's Grams, weights and streams) but "
                        f"{free / 2**30:.1f} GiB is available; use fewer --calibration-samples or a machine with more memory")
    return peak
