"""Execute a plan: slice one tensor at a time from memory-mapped input into output shards.

Tensors are visited in input (shard, offset) order; large tensors go in row blocks so the
working memory stays near `block_bytes` whatever the model size.  Raw elements are moved
as unsigned ints of the dtype's width (no dtype round trip); only RMSNorm rescaling does
arithmetic, in float32 with round-to-nearest-even back to the storage dtype.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


@dataclass(frozen=True)
class InKernelCopy:
    """An unchanged tensor: copy its bytes file to file (copy_file_range), never through Python."""

    fd: int
    offset: int
    length: int


Block = tuple["np.ndarray | memoryview | InKernelCopy", int, int]  # data, then the input range it used up


def _blocks(tp: TensorPlan, blob: Blob, backend: Backend, block_bytes: int) -> Iterator[Block]:
    """Output bytes of one tensor in blocks, each with the input range that may be released after it."""
    ref = tp.source
    if ref.nbytes == 0:
        return
    if tp.identity and callable(getattr(blob, "fileno", None)):
        yield InKernelCopy(blob.fileno(), ref.offset, ref.nbytes), ref.offset, ref.nbytes  # type: ignore[attr-defined]
        return
    data = blob.read(ref.offset, ref.nbytes)
    if tp.identity:
        for start in range(0, ref.nbytes, block_bytes):
            yield data[start : start + block_bytes], ref.offset + start, min(block_bytes, ref.nbytes - start)
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
        yield np.ascontiguousarray(block), ref.offset + lo * row_bytes, (hi - lo) * row_bytes
    if tp.pad_rows:
        yield np.zeros((tp.pad_rows, *tp.out.shape[1:]), dtype=raw_dtype(ref.dtype)), 0, 0


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
                 backend: Backend, block_bytes: int, progress: Progress | None) -> None:
    writer = ShardWriter(out_dir / layout.file, layout)
    blobs: dict[str, Blob] = {}
    behind = _WriteBehind()

    def write(blob: Blob, data: np.ndarray | memoryview | InKernelCopy, offset: int, length: int) -> None:
        if isinstance(data, InKernelCopy):
            writer.copy_range(data.fd, data.offset, data.length)
        else:
            writer.write(data)
            blob.release(offset, length)

    def end(nbytes: int) -> None:
        writer.end()
        if progress:
            progress(nbytes)

    try:
        for tp in items:
            behind.submit(lambda name=tp.out.name: writer.begin(name))  # type: ignore[misc]
            blob = blobs.get(tp.source.file) or blobs.setdefault(tp.source.file, storage.open_blob(tp.source.file))
            for data, offset, length in _blocks(tp, blob, backend, block_bytes):
                behind.submit(lambda b=blob, d=data, o=offset, n=length: write(b, d, o, n))  # type: ignore[misc]
                del data
            behind.submit(lambda n=tp.out.nbytes: end(n))  # type: ignore[misc]
        behind.close()
        writer.close()
    except BaseException:
        behind.close(check=False)
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
