"""Execute a plan: slice one tensor at a time from memory-mapped input into output shards.

Tensors are visited in input (shard, offset) order; large tensors go in row blocks so the
working memory stays near `block_bytes` whatever the model size.  Raw elements are moved
as unsigned ints of the dtype's width (no dtype round trip); only rescaled tensors (norm
weights, and what a table marks `residual` or `embed_scale`) see arithmetic, in float32 with
round-to-nearest-even back to the storage dtype.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .backend import Backend, NumpyBackend, default_workers
from .dtypes import from_float32, raw_dtype, to_float32
from .gather import BufferPool, gather_into, out_shape
from .plan import BLOCK_BYTES, Plan, TensorPlan
from .quant import dequantize_packed, dequantize_rows, load_scales
from .sink import ShardLayout, ShardWriter, write_index
from .storage import Blob, Storage

Progress = Callable[[int], None]


def _rescale_values(values: np.ndarray, tp: TensorPlan) -> np.ndarray:
    """(w + offset) * scale - offset in float32, in place (`values` is a fresh float32 array)."""
    offset, scale = np.float32(tp.rescale_offset), np.float32(tp.rescale)
    if offset:
        values += offset
    values *= scale
    if offset:
        values -= offset
    return values


def _rescaled(block: np.ndarray, tp: TensorPlan) -> np.ndarray:
    """A block rescaled in float32 (one float32 copy), rounded back to the storage dtype."""
    return from_float32(_rescale_values(to_float32(block, tp.source.dtype), tp), tp.source.dtype).reshape(block.shape)


def _dequantized(block: np.ndarray, tp: TensorPlan, lo: int, kept: np.ndarray | None, scales: np.ndarray) -> np.ndarray:
    """Input rows lo.. of a block-quantized weight: dequantized, gathered, rescaled, encoded."""
    values = dequantize_rows(block, tp.source.dtype, lo, scales, tp.dequant.block)  # type: ignore[union-attr]
    values = values if kept is None else values[kept]
    for axis, idx in enumerate(tp.index[1:], start=1):
        values = values if idx is None else np.take(values, idx, axis=axis)
    return from_float32(_rescale_values(values, tp) if tp.rescale is not None else values, tp.out.dtype)


@dataclass(frozen=True)
class InKernelCopy:
    """An unchanged tensor: copy its bytes file to file (copy_file_range), never through Python."""

    fd: int
    offset: int
    length: int


Block = tuple["np.ndarray | memoryview | InKernelCopy", int, int, "np.ndarray | None"]
"""Data; the input range to release once written; the pooled buffer to give back once written."""


def _slice(tp: TensorPlan, blob: Blob, backend: Backend, pool: BufferPool, lo: int, hi: int,
           rows: np.ndarray | None, scales: np.ndarray | None = None) -> Block:
    """Output rows of one block: input rows lo..hi, gathered, sliced, rescaled (or dequantized)."""
    ref = tp.source
    row_bytes = ref.nbytes // ref.shape[0]
    buffer = blob.read(ref.offset + lo * row_bytes, (hi - lo) * row_bytes)
    block = np.frombuffer(buffer, dtype=raw_dtype(ref.dtype)).reshape((hi - lo, *ref.shape[1:]))
    kept = None if rows is None or len(rows) == hi - lo else rows - lo
    if scales is not None:
        out = _dequantized(block, tp, lo, kept, scales)
        blob.release(ref.offset + lo * row_bytes, (hi - lo) * row_bytes)
        return out, 0, 0, None
    index = list(tp.index[1:])
    if kept is None and all(idx is None for idx in index) and tp.rescale is None:
        return block, ref.offset + lo * row_bytes, (hi - lo) * row_bytes, None  # still the input's memory
    out, lease = pool.take(out_shape(block, kept, index), block.dtype)
    gather_into(block, kept, index, out, backend)
    blob.release(ref.offset + lo * row_bytes, (hi - lo) * row_bytes)
    if tp.rescale is not None:
        out[...] = _rescaled(out, tp)
    return out, 0, 0, lease


def merge_leading(tp: TensorPlan, block_bytes: int) -> TensorPlan:
    """The same slicing with the first two axes merged while one slice of axis 0 exceeds a block.

    A fused 3-D expert tensor (experts, rows, cols) of 10+ GB is then cut in blocks of whole
    (expert, row) lines, like a 2-D tensor, instead of one whole expert at a time: the kept
    lines are the kept experts times the kept rows.  Row-major bytes are unchanged by the view.
    """
    ref, index = tp.source, tp.index
    while len(ref.shape) > 2 and ref.nbytes // max(1, ref.shape[0]) > block_bytes:
        a, b = ref.shape[0], ref.shape[1]
        merged = None
        if index[0] is not None or index[1] is not None:
            outer = np.arange(a, dtype=np.int64) if index[0] is None else index[0].astype(np.int64)
            inner = np.arange(b, dtype=np.int64) if index[1] is None else index[1].astype(np.int64)
            merged = (outer[:, None] * b + inner[None, :]).ravel()
        ref = replace(ref, shape=(a * b, *ref.shape[2:]))
        index = (merged, *index[2:])
        tp = replace(tp, source=ref, out=replace(tp.out, shape=(tp.out.shape[0] * tp.out.shape[1], *tp.out.shape[2:])), index=index)
    return tp


def _packed_jobs(tp: TensorPlan, blob: Blob, scales: np.ndarray, block_bytes: int) -> Iterator[Callable[[], Block]]:
    """Blocks of an MXFP4 tensor (experts, rows, cols/32, 16) written dequantized and transposed to
    (experts, cols, rows), as transformers holds it: per kept expert, runs of kept columns whose
    float32 values (all rows) fit in a block."""
    ref = tp.source
    per, rows = ref.nbytes // ref.shape[0], ref.shape[1]
    cols = np.arange(ref.shape[2] * 32) if tp.index[2] is None else np.asarray(tp.index[2])
    step = max(32, block_bytes // (4 * rows) // 32 * 32)  # input columns per block

    def job(e: int, chunk: np.ndarray, last: bool) -> Block:
        g0, g1 = int(chunk[0]) // 32, int(chunk[-1]) // 32 + 1
        raw = np.frombuffer(blob.read(ref.offset + e * per, per), dtype=np.uint8).reshape(ref.shape[1:])
        values = dequantize_packed(raw[:, g0:g1], scales[e][:, g0:g1])
        values = values if tp.index[1] is None else np.take(values, tp.index[1], axis=0)
        values = np.ascontiguousarray(values[:, chunk - g0 * 32].T)  # a fresh array: rescaled in place
        out = from_float32(_rescale_values(values, tp) if tp.rescale is not None else values, tp.out.dtype)[None]
        if last:
            blob.release(ref.offset + e * per, per)
        return out, 0, 0, None

    chunks = []
    start = 0
    while start < len(cols):
        end = int(np.searchsorted(cols, int(cols[start]) // 32 * 32 + step, side="left"))
        chunks.append(cols[start:end])
        start = end
    for e in range(ref.shape[0]) if tp.index[0] is None else tp.index[0]:
        for i, chunk in enumerate(chunks):
            yield lambda e=int(e), chunk=chunk, last=i == len(chunks) - 1: job(e, chunk, last)  # type: ignore[misc]


def _block_jobs(tp: TensorPlan, blob: Blob, backend: Backend, pool: BufferPool,
                scales: np.ndarray | None = None) -> Iterator[Callable[[], Block]]:
    """Thunks that each produce one output block of a tensor, in order (safe to run in threads).

    `scales`: the block scales of a weight written dequantized (its blocks are float32 inside)."""
    if tp.dequant is not None and tp.dequant.packed:
        yield from _packed_jobs(tp, blob, scales, pool.capacity)  # type: ignore[arg-type]
        return
    tp = merge_leading(tp, pool.capacity)
    ref, block_bytes = tp.source, pool.capacity
    if ref.nbytes == 0:
        return
    if tp.identity and callable(getattr(blob, "fileno", None)):
        yield lambda: (InKernelCopy(blob.fileno(), ref.offset, ref.nbytes), 0, 0, None)  # type: ignore[attr-defined]
        return
    if tp.identity or not ref.shape:
        for start in range(0, ref.nbytes, block_bytes):
            size = min(block_bytes, ref.nbytes - start)
            yield lambda start=start, size=size: (blob.read(ref.offset + start, size), ref.offset + start, size, None)  # type: ignore[misc]
        return
    rows = tp.index[0]
    widen = 1 if scales is None else 4 // max(1, ref.nbytes // max(1, ref.numel))  # float32 values per code
    step = max(1, block_bytes // max(1, widen * ref.nbytes // ref.shape[0]))  # input rows per block
    if rows is None:
        for lo in range(0, ref.shape[0], step):
            yield lambda lo=lo: _slice(tp, blob, backend, pool, lo, min(ref.shape[0], lo + step), None, scales)  # type: ignore[misc]
    else:
        start = 0
        while start < len(rows):  # a block spans at most `step` input rows, however sparse the kept rows
            end = int(np.searchsorted(rows, int(rows[start]) + step, side="left"))
            chunk = rows[start:end]
            yield lambda chunk=chunk: _slice(tp, blob, backend, pool, int(chunk[0]), int(chunk[-1]) + 1, chunk, scales)  # type: ignore[misc]
            start = end
    if tp.pad_rows:
        yield lambda: (np.zeros((tp.pad_rows, *tp.out.shape[1:]), dtype=raw_dtype(ref.dtype)), 0, 0, None)


class _WriteBehind:
    """Runs writes on a background thread so slicing the next block overlaps writing this one.

    At most `depth` blocks wait in the queue, so memory stays bounded.  An error on the
    writer thread is raised again in the caller at the next submit or at close.
    """

    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="prune-surgery-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._queue.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # handed to the caller
                    self._error = exc

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a write (blocks while the queue is full)."""
        if self._error is not None:
            raise self._error
        self._queue.put(job)

    def close(self, check: bool = True) -> None:
        """Finish queued writes; raise the writer's error if `check`."""
        self._queue.put(None)
        self._thread.join()
        if check and self._error is not None:
            raise self._error


def _write_shard(layout: ShardLayout, items: list[TensorPlan], storage: Storage, out_dir: Path,
                 backend: Backend, buffers: BufferPool, progress: Progress | None, pool: ThreadPoolExecutor | None,
                 in_flight: int) -> None:
    """Slice blocks (on `pool` when given, in order) and write them behind, tensor after tensor."""
    writer = ShardWriter(out_dir / layout.file, layout)
    blobs: dict[str, Blob] = {}
    behind = _WriteBehind()
    pending: deque[Future[Callable[[], None]] | Callable[[], None]] = deque()

    def write_job(thunk: Callable[[], Block], blob: Blob) -> Callable[[], None]:
        data, offset, length, lease = thunk()

        def write() -> None:
            if isinstance(data, InKernelCopy):
                writer.copy_range(data.fd, data.offset, data.length)
            else:
                writer.write(data)
                if length:
                    blob.release(offset, length)
                buffers.give(lease)
        return write

    def drain(limit: int) -> None:
        while len(pending) > limit:
            item = pending.popleft()
            behind.submit(item.result() if isinstance(item, Future) else item)

    swept: dict[str, int] = {}  # per input file: everything before this offset has been released

    def end(tp: TensorPlan, blob: Blob) -> None:
        writer.end()
        # Sweep the input behind this tensor: pages the kernel mapped around a block (fault-around)
        # or at a block's edge would otherwise stay resident, a few per block, growing with the model.
        start, stop = swept.get(tp.source.file, 0), tp.source.offset + tp.source.nbytes
        if stop > start:
            blob.release(start, stop - start)
            swept[tp.source.file] = stop
        if progress:
            progress(tp.out.nbytes)

    try:
        for tp in items:
            pending.append(lambda name=tp.out.name: writer.begin(name))  # type: ignore[misc]
            blob = blobs.get(tp.source.file) or blobs.setdefault(tp.source.file, storage.open_blob(tp.source.file))
            scales = load_scales(storage, tp.dequant) if tp.dequant is not None else None
            for thunk in _block_jobs(tp, blob, backend, buffers, scales):
                pending.append(pool.submit(write_job, thunk, blob) if pool else write_job(thunk, blob))
                drain(in_flight)
            pending.append(lambda tp=tp, blob=blob: end(tp, blob))  # type: ignore[misc]
        drain(0)
        behind.close()
        writer.close()
    except BaseException:
        for item in pending:
            if isinstance(item, Future):
                item.cancel()
        behind.close(check=False)
        writer.abort()
        raise
    finally:
        for blob in blobs.values():
            blob.close()


def execute(plan: Plan, storage: Storage, out_dir: Path, *, backend: Backend | None = None,
            block_bytes: int = BLOCK_BYTES, workers: int | None = None, progress: Progress | None = None) -> None:
    """Write every shard of `plan` (and the index) into `out_dir`.

    `workers` threads slice row blocks concurrently (results are written in order by one
    writer thread); 1 slices on the calling thread.
    """
    backend = backend or NumpyBackend()
    by_name = {t.out.name: t for t in plan.tensors}
    workers = default_workers() if workers is None else workers
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prune-surgery-slice") if workers > 1 else None
    buffers = BufferPool(block_bytes)
    try:
        for layout in plan.shards:
            items = [by_name[o.name] for o in layout.tensors]
            _write_shard(layout, items, storage, out_dir, backend, buffers, progress, pool, workers + 1 if pool else 0)
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    write_index(out_dir, plan.shards)
