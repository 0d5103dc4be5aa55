"""The metadata of a torch_dist (PyTorch Distributed Checkpoint) folder, read without torch's classes.

A torch_dist folder holds ``.metadata`` (a pickle of torch's DCP ``Metadata``), ``__R_I.distcp``
files (each chunk a ``torch.save`` blob at a byte range), ``common.pt`` and ``metadata.json``.
``.metadata`` is read by an unpickler that knows an allow-list of names and builds inert
stand-ins for them: records that keep their fields, never torch's own classes, never any
other code.  Anything else is refused before it is constructed.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

_DCP = "torch.distributed.checkpoint."
_RECORDS = {
    _DCP + "metadata.Metadata", _DCP + "metadata.TensorStorageMetadata", _DCP + "metadata.BytesStorageMetadata",
    _DCP + "metadata.ChunkStorageMetadata", _DCP + "metadata.MetadataIndex", _DCP + "metadata.StorageMeta",
    _DCP + "metadata.TensorProperties", _DCP + "filesystem._StorageInfo",
}
#: TensorProperties pickles its fields as a tuple in this order
_PROPERTY_FIELDS = ("dtype", "layout", "requires_grad", "memory_format", "pin_memory")
DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


class Record:
    """Stands in for one of torch's DCP dataclasses: keeps the pickled fields, runs nothing."""

    kind = "record"

    def __setstate__(self, state: Any) -> None:
        """Keep the fields (TensorProperties pickles a tuple, the others a dict)."""
        if isinstance(state, tuple) and self.kind == "TensorProperties":
            state = dict(zip(_PROPERTY_FIELDS, state))
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) form
        if not isinstance(state, dict):
            raise CheckpointError(f"torch_dist metadata: unexpected state of {self.kind}")
        self.__dict__.update(state)


def _record(qualname: str) -> type:
    name = qualname.rsplit(".", 1)[1]
    return type(name, (Record,), {"kind": name, "__module__": __name__})


def _name(prefix: str) -> Any:
    return lambda *args: prefix + ".".join(str(a) for a in args)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self.path = path
        self.records = {name: _record(name) for name in _RECORDS}

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname in self.records:
            return self.records[qualname]
        if qualname == "torch.Size":
            return lambda dims=(): tuple(int(d) for d in dims)
        if module == "torch" and name in (*DTYPES, "int64", "int32", "uint8", "float64", "int8", "bool"):
            return f"torch.{name}"
        if qualname in ("torch.serialization._get_layout", _DCP + "metadata._MEM_FORMAT_ENCODING"):
            return _name("")
        if qualname in ("pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.Path"):
            return _name("path:")
        if qualname == "collections.OrderedDict":
            return dict
        raise CheckpointError(
            f"{self.path}: refused to load, it names {qualname}, which is not on the allowlist of torch_dist "
            "metadata (prune-surgery never runs pickled code)"
        )


CONFIG = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch", "common_backend_version": 1}


def is_dist_folder(folder: Path) -> bool:
    """Whether `folder` holds a torch_dist checkpoint (its metadata.json says so)."""
    config = Path(folder) / "metadata.json"
    try:
        return json.loads(config.read_text()).get("sharded_backend") == "torch_dist"
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: where it sits in the whole tensor and in which file bytes."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    start: int
    length: int


@dataclass(frozen=True)
class DistTensor:
    """A whole tensor of the checkpoint: its global shape, dtype name and chunks."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class DistMetadata:
    """The tensors (by key) and the byte-object keys of a torch_dist folder."""

    tensors: dict[str, DistTensor]
    objects: list[str]


def read_metadata(folder: Path) -> DistMetadata:
    """Parse ``folder/.metadata`` safely into tensors with their chunks."""
    path = Path(folder) / ".metadata"
    try:
        with path.open("rb") as handle:
            meta = _Unpickler(handle, path).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a readable torch_dist metadata file ({exc}); the checkpoint is damaged") from None
    if getattr(meta, "kind", None) != "Metadata":
        raise CheckpointError(f"{path}: holds {type(meta).__name__}, not a torch distributed-checkpoint Metadata")
    where: dict[tuple[str, tuple[int, ...] | None], Any] = {}
    for index, info in (getattr(meta, "storage_data", None) or {}).items():
        offset = getattr(index, "offset", None)
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{path}: {index.fqn} is stored with transforms {info.transform_descriptors} "
                                  "(compressed or encrypted); save the checkpoint without them")
        where[(index.fqn, None if offset is None else tuple(offset))] = info
    tensors: dict[str, DistTensor] = {}
    objects: list[str] = []
    for key, item in meta.state_dict_metadata.items():
        if item.kind == "BytesStorageMetadata":
            objects.append(key)
            continue
        dtype = str(item.properties.dtype).removeprefix("torch.")
        chunks = []
        for chunk in item.chunks:
            info = where.get((key, tuple(chunk.offsets)))
            if info is None:
                raise CheckpointError(f"{path}: chunk {tuple(chunk.offsets)} of {key} has no storage entry; the checkpoint is incomplete")
            chunks.append(Chunk(tuple(chunk.offsets), tuple(chunk.sizes), info.relative_path, int(info.offset), int(info.length)))
        tensors[key] = DistTensor(key, tuple(item.size), DTYPES.get(dtype, dtype), tuple(chunks))
    return DistMetadata(tensors, objects)


def load_chunk(folder: Path, chunk: Chunk) -> Any:
    """One chunk as a torch tensor: its byte range read and loaded with ``weights_only=True``."""
    import torch

    path = Path(folder) / chunk.file
    if "/" in chunk.file or chunk.file.startswith(".."):
        raise CheckpointError(f"{folder}: chunk file {chunk.file!r} is outside the checkpoint folder")
    try:
        with path.open("rb") as handle:
            handle.seek(chunk.start)
            data = handle.read(chunk.length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror}); the checkpoint is incomplete") from None
    if len(data) != chunk.length:
        raise CheckpointError(f"{path} is shorter than its metadata says; the checkpoint is incomplete")
    try:
        tensor = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unreadable chunk
        raise CheckpointError(f"{path}: chunk at byte {chunk.start} is not a torch tensor ({str(exc).splitlines()[0][:100]})") from None
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != chunk.sizes:
        raise CheckpointError(f"{path}: chunk at byte {chunk.start} does not hold a tensor of shape {chunk.sizes}")
    return tensor
