"""Execute a plan: slice one tensor at a time from memory-mapped input into output shards.

Tensors are visited in input (shard, offset) order; large tensors go in row blocks so the
working memory stays near `block_bytes` whatever the model size.  Raw elements are moved
as unsigned ints of the dtype's width (no dtype round trip); only RMSNorm rescaling does
arithmetic, in float32 with round-to-nearest-even back to the storage dtype.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .backend import Backend, NumpyBackend
from .dtypes import from_float32, raw_dtype, to_float32
from .plan import Plan, TensorPlan
from .sink import ShardLayout, ShardWriter, write_index
from .storage import Blob, Storage

Progress = Callable[[int], None]


def _rescaled(block: np.ndarray, tp: TensorPlan) -> np.ndarray:
    """(w + offset) * scale - offset in float32, rounded back to the storage dtype (one block)."""
    offset, scale = np.float32(tp.rescale_offset), np.float32(tp.rescale)
    values = to_float32(block, tp.source.dtype)
    values = (values + offset) * scale - offset if offset else values * scale
    return from_float32(values, tp.source.dtype).reshape(block.shape)


def _blocks(tp: TensorPlan, blob: Blob, backend: Backend, block_bytes: int) -> Iterator[np.ndarray | memoryview]:
    ref = tp.source
    if ref.nbytes == 0:
        return
    data = blob.read(ref.offset, ref.nbytes)
    if tp.identity:
        for start in range(0, ref.nbytes, block_bytes):
            yield data[start : start + block_bytes]
            blob.release(ref.offset + start, min(block_bytes, ref.nbytes - start))
        return
    raw = np.frombuffer(data, dtype=raw_dtype(ref.dtype)).reshape(ref.shape)
    rows, rest = tp.index[0], tp.index[1:]
    row_bytes = max(1, ref.nbytes // max(1, ref.shape[0]))
    step = max(1, block_bytes // row_bytes)
    count = ref.shape[0] if rows is None else len(rows)
    for start in range(0, count, step):
        if rows is None:
            lo, hi = start, min(count, start + step)
            block = raw[lo:hi]
        else:
            chunk = rows[start : start + step]
            lo, hi = int(chunk[0]), int(chunk[-1]) + 1
            block = raw[lo:hi] if hi - lo == len(chunk) else backend.take(raw, chunk, 0)
        for axis, idx in enumerate(rest, start=1):
            if idx is not None:
                block = backend.take(block, idx, axis)
        if tp.rescale is not None:
            block = _rescaled(block, tp)
        yield np.ascontiguousarray(block)
        blob.release(ref.offset + lo * row_bytes, (hi - lo) * row_bytes)
    if tp.pad_rows:
        yield np.zeros((tp.pad_rows, *tp.out.shape[1:]), dtype=raw_dtype(ref.dtype))


def _write_shard(layout: ShardLayout, items: list[TensorPlan], storage: Storage, out_dir: Path,
                 backend: Backend, block_bytes: int, progress: Progress | None) -> None:
    writer = ShardWriter(out_dir / layout.file, layout)
    blobs: dict[str, Blob] = {}
    try:
        for tp in items:
            writer.begin(tp.out.name)
            blob = blobs.get(tp.source.file) or blobs.setdefault(tp.source.file, storage.open_blob(tp.source.file))
            for block in _blocks(tp, blob, backend, block_bytes):
                writer.write(block)
                del block
            writer.end()
            if progress:
                progress(tp.out.nbytes)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        for blob in blobs.values():
            blob.close()


def execute(plan: Plan, storage: Storage, out_dir: Path, *, backend: Backend | None = None,
            block_bytes: int = 64 << 20, workers: int = 1, progress: Progress | None = None) -> None:
    """Write every shard of `plan` (and the index) into `out_dir`."""
    backend = backend or NumpyBackend()
    by_name = {t.out.name: t for t in plan.tensors}
    jobs = [(layout, [by_name[o.name] for o in layout.tensors]) for layout in plan.shards]
    lock = threading.Lock()

    def report(n: int) -> None:
        if progress:
            with lock:
                progress(n)

    if workers <= 1 or len(jobs) == 1:
        for layout, items in jobs:
            _write_shard(layout, items, storage, out_dir, backend, block_bytes, report)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_write_shard, layout, items, storage, out_dir, backend, block_bytes, report) for layout, items in jobs]
            for future in futures:
                future.result()
    write_index(out_dir, plan.shards)
