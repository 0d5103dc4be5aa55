"""Where a checkpoint's files live: a small protocol, and its local-folder implementation.

The engine never opens files itself; it asks a :class:`Storage` for small files (config,
index, tokenizer) and for :class:`Blob` random access to shards.  A local folder gives
memory-mapped blobs (zero-copy views); the Hub module gives range-request blobs.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from .errors import CheckpointError

_PAGE = mmap.PAGESIZE
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux >= 5.14


@runtime_checkable
class Blob(Protocol):
    """Random read access to one large file."""

    size: int

    def read(self, offset: int, length: int) -> memoryview | bytes:
        """Exactly `length` bytes starting at `offset` (a view where possible)."""

    def release(self, offset: int, length: int) -> None:
        """Hint that bytes in this range will not be read again (drop them from memory)."""

    def close(self) -> None:
        """Free the blob's resources."""


@runtime_checkable
class Storage(Protocol):
    """A checkpoint folder: names are paths relative to its root, with '/' separators."""

    description: str

    def exists(self, name: str) -> bool:
        """Whether the file `name` exists."""

    def read_bytes(self, name: str) -> bytes:
        """The whole content of a small file."""

    def size(self, name: str) -> int:
        """The size of `name` in bytes."""

    def open_blob(self, name: str) -> Blob:
        """Random access to a (large) file."""

    def list_files(self) -> list[str]:
        """Every file name in the folder (recursively), sorted."""


class MmapBlob:
    """A read-only memory map of a local file; `release` returns pages to the page cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) if self.size else None
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")
        self._populate = hasattr(self._map, "madvise")

    def fileno(self) -> int:
        """The open file descriptor (for in-kernel copies of unchanged tensors)."""
        return self._fd

    def read(self, offset: int, length: int) -> memoryview:
        """A zero-copy view of `length` bytes at `offset`, its page tables filled in one call."""
        if offset < 0 or offset + length > self.size:
            raise CheckpointError(f"{self.path.name}: read past the end of the file (truncated shard?)")
        if self._populate and length >= _PAGE and self._map is not None:
            start = offset - offset % _PAGE
            try:  # one syscall instead of a page fault per few pages: about 2x faster gathers
                self._map.madvise(MADV_POPULATE_READ, start, min(self.size, offset + length) - start)
            except OSError:  # kernel before 5.14: fault pages in as usual
                self._populate = False
        return self._view[offset : offset + length]

    def release(self, offset: int, length: int) -> None:
        """Drop the mapped pages of a range from this process's resident set."""
        if self._map is None or length <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = offset - offset % _PAGE
        end = min(self.size, offset + length)
        end -= end % _PAGE  # only whole pages; partial pages stay until the next release
        if end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        """Unmap and close the file (views handed out must be released first)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            self._view.release()
            if self._map is not None:
                self._map.close()
        except BufferError:  # a numpy view is still alive; the GC unmaps it later
            pass


class LocalStorage:
    """A checkpoint in a local folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.description = str(self.root)
        if not self.root.is_dir():
            raise CheckpointError(f"source {root} is not a folder; give a checkpoint folder or a Hub repo id")

    def _path(self, name: str) -> Path:
        """`name` under the root, checked as written and once symlinks are resolved.

        A file that links outside the folder is refused (the Hub cache's links into its blob
        store are allowed by :class:`~prune_surgery.hub.SnapshotStorage`).
        """
        path = PurePosixPath(name)
        if not path.parts or path.is_absolute() or ".." in path.parts or "\\" in name:
            raise CheckpointError(
                f"{name!r} points outside the checkpoint folder; an index may only name files inside it"
            )
        joined = self.root.joinpath(*path.parts)
        if self.root not in joined.resolve().parents:
            raise CheckpointError(
                f"{name} in {self.root} is a link to {joined.resolve()}, outside the checkpoint folder; "
                "copy the file into the folder instead of linking it"
            )
        return joined

    def exists(self, name: str) -> bool:
        """Whether the file `name` exists inside the folder."""
        return self._path(name).is_file()

    def read_bytes(self, name: str) -> bytes:
        """The content of a small file."""
        return self._path(name).read_bytes()

    def size(self, name: str) -> int:
        """File size in bytes."""
        return self._path(name).stat().st_size

    def open_blob(self, name: str) -> MmapBlob:
        """Memory-map the file `name`."""
        return MmapBlob(self._path(name))

    def list_files(self) -> list[str]:
        """Every regular file under the folder, as relative '/'-separated names."""
        return sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )
