"""Index a safetensors checkpoint: parse and validate every shard header, never the data.

A tensor is a :class:`TensorRef` (file, absolute byte offset, dtype, shape).  Validation is
strict because everything downstream trusts it: header size cap, known dtypes, shapes that
match byte lengths, offsets inside the file and not overlapping, an index.json that names
only files inside the folder and agrees with the shards' real contents.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .dtypes import itemsize
from .errors import CheckpointError
from .storage import Storage

MAX_HEADER_BYTES = 100_000_000
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: a reference, never the data."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute offset of the first byte in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass
class Checkpoint:
    """Every tensor of a checkpoint, its config, and where it came from."""

    storage: Storage
    config: dict[str, Any]
    tensors: dict[str, TensorRef]  # ordered by (file, offset)
    files: list[str]
    metadata: dict[str, dict[str, str]]  # per file: its __metadata__

    @property
    def total_bytes(self) -> int:
        """Sum of all tensor byte sizes."""
        return sum(t.nbytes for t in self.tensors.values())


def parse_header(raw_len: bytes, header: bytes, file: str, file_size: int) -> tuple[dict[str, str], list[TensorRef]]:
    """Validate one safetensors header and return (metadata, tensors sorted by offset)."""
    (length,) = struct.unpack("<Q", raw_len)
    try:
        table = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: the safetensors header is not valid JSON ({exc.__class__.__name__}); the file is damaged, download it again") from None
    if not isinstance(table, dict):
        raise CheckpointError(f"{file}: the safetensors header is not a JSON object; the file is damaged")
    metadata = table.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{file}: __metadata__ must map strings to strings")
    data_start = 8 + length
    data_len = file_size - data_start
    refs: list[TensorRef] = []
    for name, info in table.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise CheckpointError(f"{file}: tensor {name!r} lacks dtype, shape or data_offsets")
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise CheckpointError(f"{file}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"{file}: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        size = itemsize(str(info["dtype"]))
        if not 0 <= begin <= end:
            raise CheckpointError(f"{file}: tensor {name!r} has data_offsets {offsets} that run backwards")
        if end > data_len:
            raise CheckpointError(
                f"{file}: tensor {name!r} ends at byte {end} but the data section holds only {max(data_len, 0)} bytes; the shard is truncated, download it again"
            )
        if math.prod(shape) * size != end - begin:
            raise CheckpointError(
                f"{file}: tensor {name!r} is {shape} x {info['dtype']} ({math.prod(shape) * size} bytes) but its offsets span {end - begin} bytes"
            )
        refs.append(TensorRef(name, file, info["dtype"], tuple(shape), data_start + begin, end - begin))
    refs.sort(key=lambda r: (r.offset, r.nbytes))
    for prev, cur in zip(refs, refs[1:]):
        if cur.offset < prev.offset + prev.nbytes:
            raise CheckpointError(f"{file}: tensors {prev.name!r} and {cur.name!r} overlap in the data section; the file is damaged")
    return metadata, refs


def read_shard_header(storage: Storage, file: str) -> tuple[dict[str, str], list[TensorRef]]:
    """Read and validate the header of one shard through `storage`."""
    if not storage.exists(file):
        raise CheckpointError(f"shard {file} is missing from {storage.description}; download the complete checkpoint")
    blob = storage.open_blob(file)
    try:
        if blob.size < 8:
            raise CheckpointError(f"{file}: only {blob.size} bytes, not a safetensors file (truncated?)")
        raw_len = bytes(blob.read(0, 8))
        (length,) = struct.unpack("<Q", raw_len)
        if length > MAX_HEADER_BYTES:
            raise CheckpointError(f"{file}: header claims {length} bytes (limit {MAX_HEADER_BYTES}); not a safetensors file or damaged")
        if 8 + length > blob.size:
            raise CheckpointError(f"{file}: header runs past the end of the file; the shard is truncated, download it again")
        return parse_header(raw_len, bytes(blob.read(8, length)), file, blob.size)
    finally:
        blob.close()


def _check_member(name: Any, where: str) -> str:
    path = PurePosixPath(str(name))
    if not isinstance(name, str) or path.is_absolute() or ".." in path.parts or "\\" in name or not name:
        raise CheckpointError(f"{where} names {name!r}, which is outside the checkpoint folder; fix the index")
    return name


def shard_files(storage: Storage) -> tuple[list[str], dict[str, str] | None]:
    """The shard names of a checkpoint and, when there is an index, its weight map."""
    if storage.exists(INDEX_NAME):
        try:
            index = json.loads(storage.read_bytes(INDEX_NAME))
            weight_map = index["weight_map"]
            assert isinstance(weight_map, dict)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise CheckpointError(f"{INDEX_NAME} is not a valid index (needs a 'weight_map' object); fix or remove it") from None
        files = sorted({_check_member(f, INDEX_NAME) for f in weight_map.values()})
        return files, weight_map
    if storage.exists(SINGLE_NAME):
        return [SINGLE_NAME], None
    found = [f for f in storage.list_files() if f.endswith(".safetensors") and "/" not in f]
    if len(found) == 1:
        return found, None
    if not found:
        raise CheckpointError(
            f"no safetensors weights in {storage.description}; convert .bin/.pth weights first "
            "(e.g. load and save_pretrained(..., safe_serialization=True) in transformers)"
        )
    raise CheckpointError(f"{len(found)} .safetensors files but no {INDEX_NAME} in {storage.description}; add the index")


def load_config(storage: Storage) -> dict[str, Any]:
    """Parse config.json."""
    if not storage.exists("config.json"):
        raise CheckpointError(f"no config.json in {storage.description}; a Hugging Face checkpoint folder is needed")
    try:
        config = json.loads(storage.read_bytes("config.json"))
    except ValueError as exc:
        raise CheckpointError(f"config.json is not valid JSON ({exc}); fix the file") from None
    if not isinstance(config, dict):
        raise CheckpointError("config.json is not a JSON object; fix the file")
    return config


def open_checkpoint(storage: Storage) -> Checkpoint:
    """Index every tensor of the checkpoint in `storage`, validating headers and index."""
    config = load_config(storage)
    files, weight_map = shard_files(storage)
    tensors: dict[str, TensorRef] = {}
    metadata: dict[str, dict[str, str]] = {}
    for file in files:
        meta, refs = read_shard_header(storage, file)
        metadata[file] = meta
        for ref in refs:
            if ref.name in tensors:
                raise CheckpointError(f"tensor {ref.name!r} appears in both {tensors[ref.name].file} and {file}; remove the duplicate shard")
            if weight_map is not None and weight_map.get(ref.name) != file:
                raise CheckpointError(f"{file} holds {ref.name!r} but {INDEX_NAME} does not map it there; the index does not match the shards")
            tensors[ref.name] = ref
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(f"{INDEX_NAME} lists {len(missing)} tensors that no shard holds (first: {missing[0]!r}); the checkpoint is incomplete")
    return Checkpoint(storage, config, tensors, files, metadata)
