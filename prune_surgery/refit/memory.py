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

Which axis of a weight is its input comes from the table (see :func:`_input_axis`), so weights
stored [in, out] are counted right; an [experts, a, b] stack has one sum per kept expert (no held-out part) and is held whole in float64 while its
slices are placed.  Readers that share one input (q/k/v, gate/up) are counted once each, so the
figure is an upper bound when hidden channels are cut.

Measured on a Llama-3-70B-shaped layer (``bench/refit_memory.py``): see
``bench/results/refit_memory.md``.
"""

from __future__ import annotations

import os
from typing import Any

from ..calibrate.readers import expert_space
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


def _input_axis(plan: Any, t: Any, experts: str | None) -> int | None:
    """The axis a layer weight's input runs along (of its last two), from the table: a tensor that
    writes the residual stream reads its other axis; one that reads the stream reads `hidden`;
    any other reads its last axis (stored [out, in]).  None for a per-expert vector (a bias stack
    [experts, n]: led by `experts`, the table's expert space from ``readers.expert_space``, and not
    reading the stream as a router does)."""
    role = plan.arch.roles.get(t.role)
    if role is None:
        return -1
    spaces = [{seg.space for seg in axis} for axis in role.axes[-2:]]
    hidden = [i for i, found in enumerate(spaces) if "hidden" in found]
    if len(role.axes) == 2 and experts in spaces[0] and (role.residual == "write" or not hidden):
        return None
    if len(spaces) != 2 or len(hidden) != 1:
        return -1
    if role.residual == "write":  # hidden is the output: the input is the other axis
        return -1 if hidden[0] == 0 else -2
    return hidden[0] - 2


def _reader(plan: Any, t: Any, experts: str | None) -> tuple[int, int, int, int, bool, int] | None:
    """(out, n, n', copies, held-out split, stack bytes) of a refit tensor's plan, None if not refit."""
    index, shape = t.index, t.source.shape
    if len(index) not in (2, 3):
        return None
    axis = _input_axis(plan, t, experts)
    if axis is None or index[axis] is None:
        return None
    other = -1 if axis == -2 else -2
    out = len(index[other]) if index[other] is not None else shape[other]
    n, k = shape[axis], len(index[axis])
    if len(index) == 2:
        return out, n, k, 1, True, 0
    count = len(index[0]) if index[0] is not None else shape[0]
    return out, n, k, count, False, count * out * k * 8


def refit_peak(plan: Any, windows: int, seq_len: int, mode: str) -> int:
    """Bytes a refit of `plan` holds at its peak (see module doc)."""
    experts = expert_space(plan.arch)
    weights: dict[int, int] = {}
    readers: dict[int, list[tuple[int, int, int, int, bool, int]]] = {}  # layer -> refit readers
    for t in plan.tensors:
        layer = t.source.name.split(".layers.")[1].split(".")[0] if ".layers." in t.source.name else None
        if layer is None or not layer.isdigit():
            continue
        weights[int(layer)] = weights.get(int(layer), 0) + t.source.numel * 4
        found = _reader(plan, t, experts)
        if found is not None:
            readers.setdefault(int(layer), []).append(found)
    if not readers:
        return 0
    pairs = mode == "sequential" and "hidden" in plan.keep  # streams of different width: C_yy beside C_xy
    layers = 2 if mode == "sequential" else 1
    f64 = 8
    peak = 0
    for layer, group in readers.items():
        total = sum(c * (n * k + (k * k if pairs and val else 0)) * f64 for _, n, k, c, val, _ in group)
        held = sum((n * k + (k * k if pairs else 0)) * f64 for _, n, k, _, val, _ in group if val)
        copies = sum(c * out * n * 4 for out, n, _, c, _, _ in group) + sum(s for *_, s in group)
        micro = MICRO_TOKENS * max(n for _, n, *_ in group) * f64 * 3
        resident = weights[layer] * (layers - 1)  # the pruned layer stays while the dense one is solved
        accumulate = total + held + weights[layer] * layers + micro
        # torch's Cholesky writes a new n' x n' beside its input: two at once
        probe = max(((2 * min(out, PROBE_ROWS) * (n + 2 * k) + 2 * k * k) * f64
                     for out, n, k, _, val, _ in group if val), default=0)
        choose = total + held + copies + probe + resident
        results = sum(c * out * k * f64 for out, _, k, c, _, _ in group)
        solve = total + copies + results + resident + max(
            max(out * n + out * k, 2 * k * k + out * k) * f64 for out, n, k, *_ in group)
        peak = max(peak, accumulate, choose, solve)
    streams = windows * seq_len * plan.sizes["hidden"] * 4 * layers
    return BASE_BYTES + streams + peak


def check_refit_memory(plan: Any, windows: int, seq_len: int, mode: str) -> int:
    """The refit's peak; SpecError when this machine has not that much memory available."""
    peak = refit_peak(plan, windows, seq_len, mode)
    free = available_bytes()
    if peak > free:
        raise SpecError(f"the refit needs about {peak / 2**30:.1f} GiB (largest layer's Grams, weights and streams) but "
                        f"{free / 2**30:.1f} GiB is available; use fewer --calibration-samples or a machine with more memory")
    return peak
