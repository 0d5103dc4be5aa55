"""Slicing backends: numpy on CPU (default) and torch on CPU or CUDA (`--device`).

Both gather raw elements (unsigned ints of the dtype's width), so they produce the same
bytes; torch is imported only when a torch backend is asked for.
"""

from __future__ import annotations

import os
import warnings
from typing import Protocol

import numpy as np

from .errors import SpecError


class Backend(Protocol):
    """Gathers kept elements of a raw block along one axis."""

    name: str
    in_place: bool  # take_into writes straight into `out`, so many small gathers are cheap

    def take(self, block: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
        """`block` restricted to `index` along `axis`, as a C-contiguous numpy array."""

    def take_into(self, block: np.ndarray, index: np.ndarray, axis: int, out: np.ndarray) -> None:
        """Write `block` restricted to `index` along `axis` into `out` (of the result's shape)."""


class NumpyBackend:
    """numpy fancy indexing on memory-mapped blocks."""

    name = "numpy"
    in_place = True

    def take(self, block: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
        """Gather along `axis` (one copy).

        Indices were checked against the axis when the plan was made, so numpy's per-index
        bounds check is skipped (mode='clip': about 1.7x faster on column gathers).
        """
        return np.take(block, index, axis=axis, mode="clip")

    def take_into(self, block: np.ndarray, index: np.ndarray, axis: int, out: np.ndarray) -> None:
        """Gather along `axis` straight into `out` (no temporary)."""
        np.take(block, index, axis=axis, out=out, mode="clip")


_SIGNED = {np.dtype(np.uint8): np.uint8, np.dtype(np.uint16): np.int16, np.dtype(np.uint32): np.int32, np.dtype(np.uint64): np.int64}


class TorchBackend:
    """torch.index_select on `device` (cpu or cuda); bytes move as signed ints of the same width."""

    def __init__(self, device: str) -> None:
        try:
            import torch
        except ImportError:
            raise SpecError(f"--device {device} needs torch; install it (pip install 'prune-surgery[torch]') or drop --device") from None
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SpecError(f"--device {device}: torch sees no CUDA device; use --device cpu or the default numpy backend")
        self.torch = torch
        self.device = torch.device(device)
        self.name = f"torch:{device}"
        self.in_place = False

    def take(self, block: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
        """Gather along `axis` on the device and copy the result back."""
        torch = self.torch
        signed = np.ascontiguousarray(block).view(_SIGNED[block.dtype])
        with warnings.catch_warnings():  # read-only mmap input: torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(signed).to(self.device)
        picked = torch.index_select(tensor, axis, torch.from_numpy(index.astype(np.int64)).to(self.device))
        return picked.cpu().numpy().view(block.dtype)

    def take_into(self, block: np.ndarray, index: np.ndarray, axis: int, out: np.ndarray) -> None:
        """Gather on the device, then copy the result into `out`."""
        out[...] = self.take(block, index, axis)


def default_workers() -> int:
    """Slicing threads by default: one per core, at most 4 (numpy gathers release the GIL)."""
    return max(1, min(4, os.cpu_count() or 1))


def make_backend(device: str | None) -> Backend:
    """numpy when `device` is None, else torch on that device."""
    if device is None or device == "numpy":
        return NumpyBackend()
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SpecError(f"--device must be cpu or cuda (or cuda:N), got {device!r}")
    return TorchBackend(device)
