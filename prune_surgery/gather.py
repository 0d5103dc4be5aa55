"""Gather one block's kept elements in one pass, straight into a recycled output buffer.

A weight pruned on both axes (rows by heads or ffn channels, columns by hidden channels)
used to be gathered twice: rows into a temporary array, then columns into a new one.
Here each run of consecutive kept rows is a view of the memory-mapped input, and its
kept columns are gathered from that view directly into the output block, so every kept
element is copied once.  Output blocks come from a small pool of buffers that are given
back once written, so the pages are faulted in once per run, not once per block.
"""

from __future__ import annotations

import threading

import numpy as np

from .backend import Backend

MIN_MEAN_RUN = 2  # kept rows per run below which one row gather + one column gather is cheaper


class BufferPool:
    """Recycles byte buffers of `capacity` bytes (thread-safe); larger requests get their own."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
        """An uninitialised array of `shape` and `dtype`, and the pooled buffer behind it (or None)."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes > self.capacity:
            return np.empty(shape, dtype), None
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None:
            buffer = np.empty(self.capacity, np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape), buffer

    def give(self, buffer: np.ndarray | None) -> None:
        """Return a buffer from `take` once its contents have been written."""
        if buffer is not None:
            with self._lock:
                self._free.append(buffer)


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive values in the sorted index array `rows`."""
    if len(rows) == 0:
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(rows)]))
    return [(int(rows[s]), int(e - s)) for s, e in zip(starts, ends)]


def out_shape(block: np.ndarray, rows: np.ndarray | None, index: list[np.ndarray | None]) -> tuple[int, ...]:
    """Shape of `block` once restricted to `rows` (axis 0) and `index[k]` (axis k + 1)."""
    shape = [block.shape[0] if rows is None else len(rows)]
    shape += [dim if idx is None else len(idx) for dim, idx in zip(block.shape[1:], index)]
    return tuple(shape)


def gather_into(block: np.ndarray, rows: np.ndarray | None, index: list[np.ndarray | None],
                out: np.ndarray, backend: Backend) -> None:
    """Write `block[rows][:, index...]` into `out` (shape from `out_shape`).

    `rows` are sorted, in range and relative to the block; `index[k]` applies to axis k + 1.
    The numpy backend gathers into `out` without a temporary.
    """
    axes = [(axis, idx) for axis, idx in enumerate(index, start=1) if idx is not None]
    runs = row_runs(rows) if rows is not None and axes else []
    if len(axes) > 1 or (runs and (not backend.in_place or len(rows) < MIN_MEAN_RUN * len(runs))):  # type: ignore[arg-type]
        picked = block if rows is None else backend.take(block, rows, 0)
        for axis, idx in axes:
            picked = backend.take(picked, idx, axis)
        out[...] = picked
    elif not axes:
        if rows is None:
            out[...] = block
        else:
            backend.take_into(block, rows, 0, out)
    elif rows is None:
        backend.take_into(block, axes[0][1], axes[0][0], out)
    else:
        axis, idx = axes[0][0], axes[0][1].astype(np.intp, copy=False)  # cast once, not per run
        done = 0
        for start, length in runs:
            backend.take_into(block[start:start + length], idx, axis, out[done:done + length])
            done += length
