"""Write safetensors shards in a stream: the header first (known from the plan), then bytes.

Output shards are named like ``save_pretrained``: ``model.safetensors`` for one shard,
``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json`` otherwise.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import PruneSurgeryError


@dataclass(frozen=True)
class OutTensor:
    """One tensor of the output, as the writer needs it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class ShardLayout:
    """One output shard: its file name and its tensors in write order."""

    file: str
    tensors: list[OutTensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in the shard."""
        return sum(t.nbytes for t in self.tensors)


def layout_shards(tensors: list[OutTensor], max_shard_size: int) -> list[ShardLayout]:
    """Split tensors, in order, into shards of at most `max_shard_size` data bytes.

    A tensor larger than the limit gets a shard of its own, as ``save_pretrained`` does.
    """
    shards: list[ShardLayout] = []
    current = ShardLayout("")
    for tensor in tensors:
        if current.tensors and current.nbytes + tensor.nbytes > max_shard_size:
            shards.append(current)
            current = ShardLayout("")
        current.tensors.append(tensor)
    if current.tensors or not shards:
        shards.append(current)
    count = len(shards)
    for number, shard in enumerate(shards, 1):
        shard.file = "model.safetensors" if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"
    return shards


def header_bytes(tensors: list[OutTensor], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length plus JSON header (space-padded to 8 bytes) for tensors in order."""
    table: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for t in tensors:
        table[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(table, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class ShardWriter:
    """Appends the planned tensors of one shard, in order, checking every byte count."""

    def __init__(self, path: Path, layout: ShardLayout) -> None:
        self.path = path
        self.layout = layout
        self._handle: BinaryIO = open(path, "wb")
        self._handle.write(header_bytes(layout.tensors))
        self._next = 0
        self._written = 0

    def begin(self, name: str) -> OutTensor:
        """Start the next tensor, which must be `name`."""
        expected = self.layout.tensors[self._next]
        if expected.name != name or self._written:
            raise PruneSurgeryError(f"internal error: writer expected {expected.name}, got {name}")
        return expected

    def write(self, data: memoryview | bytes | np.ndarray) -> None:
        """Append bytes of the current tensor (any C-contiguous buffer)."""
        self._handle.write(data)
        self._written += memoryview(data).nbytes

    def copy_range(self, fd: int, offset: int, length: int) -> None:
        """Append `length` bytes of the file `fd` at `offset`, copied inside the kernel."""
        self._handle.flush()
        out = self._handle.fileno()
        position = self._handle.tell()
        done = 0
        try:
            while done < length:
                n = os.copy_file_range(fd, out, length - done, offset + done, position + done)
                if n == 0:
                    raise OSError("copy_file_range copied nothing")
                done += n
        except OSError:  # not supported here (other filesystem, old kernel): copy through memory
            while done < length:
                chunk = os.pread(fd, min(64 << 20, length - done), offset + done)
                os.pwrite(out, chunk, position + done)
                done += len(chunk)
        self._handle.seek(position + length)
        self._written += length

    def end(self) -> None:
        """Finish the current tensor; its byte count must match the plan."""
        expected = self.layout.tensors[self._next]
        if self._written != expected.nbytes:
            raise PruneSurgeryError(f"internal error: {expected.name} got {self._written} bytes, planned {expected.nbytes}")
        self._next += 1
        self._written = 0

    def close(self) -> None:
        """Close the file; every planned tensor must have been written."""
        self._handle.close()
        if self._next != len(self.layout.tensors):
            raise PruneSurgeryError(f"internal error: {self.path.name} closed after {self._next} of {len(self.layout.tensors)} tensors")

    def abort(self) -> None:
        """Close without checks (the output folder is being discarded)."""
        self._handle.close()


def write_index(out_dir: Path, shards: list[ShardLayout]) -> None:
    """Write ``model.safetensors.index.json`` when there is more than one shard."""
    if len(shards) < 2:
        return
    index = {
        "metadata": {"total_size": sum(s.nbytes for s in shards)},
        "weight_map": {t.name: s.file for s in shards for t in s.tensors},
    }
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
