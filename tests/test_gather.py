"""gather_into: one pass into a pooled buffer equals plain numpy fancy indexing."""

from __future__ import annotations

import numpy as np
import pytest

from prune_surgery.backend import NumpyBackend
from prune_surgery.gather import BufferPool, gather_into, out_shape, row_runs


class CopyingBackend(NumpyBackend):
    """A backend that cannot write in place (like torch): gathers go through a copy."""

    in_place = False

    def take_into(self, block, index, axis, out):
        out[...] = self.take(block, index, axis)


def reference(block, rows, index):
    picked = block if rows is None else block[rows]
    for axis, idx in enumerate(index, start=1):
        if idx is not None:
            picked = np.take(picked, idx, axis=axis)
    return picked


def test_row_runs():
    assert row_runs(np.array([], dtype=np.int32)) == []
    assert row_runs(np.array([0, 1, 2, 5, 7, 8], dtype=np.int32)) == [(0, 3), (5, 1), (7, 2)]


@pytest.mark.parametrize("backend", [NumpyBackend(), CopyingBackend()], ids=["in-place", "copying"])
@pytest.mark.parametrize("keep_rows", [None, 1.0, 0.9, 0.3])
@pytest.mark.parametrize("shape,cols", [((64,), []), ((64, 24), [None]), ((64, 24), [0.5]), ((40, 6, 8), [0.5, 0.75]),
                                        ((40, 6, 8), [None, 0.5])])
def test_gather_into_matches_fancy_indexing(backend, keep_rows, shape, cols):
    rng = np.random.default_rng(len(shape) * 100 + len(cols))
    block = rng.integers(0, 2**16, size=shape, dtype=np.uint16)

    def pick(n, frac):
        return np.sort(rng.choice(n, size=max(1, int(n * frac)), replace=False)).astype(np.int32)

    rows = None if keep_rows is None else pick(shape[0], keep_rows)
    index = [None if f is None else pick(dim, f) for dim, f in zip(shape[1:], cols)]
    pool = BufferPool(1 << 20)
    out, lease = pool.take(out_shape(block, rows, index), block.dtype)
    out[...] = 0xFFFF
    gather_into(block, rows, index, out, backend)
    np.testing.assert_array_equal(out, reference(block, rows, index))
    pool.give(lease)
    again, lease2 = pool.take((3,), np.dtype(np.uint16))
    assert lease2 is lease  # the buffer is recycled


def test_pool_gives_large_requests_their_own_array():
    pool = BufferPool(64)
    big, lease = pool.take((100,), np.dtype(np.uint16))
    assert lease is None and big.shape == (100,)
    small, lease = pool.take((4, 8), np.dtype(np.uint16))
    assert lease is not None and small.shape == (4, 8) and small.flags.c_contiguous
