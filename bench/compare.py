"""Compare the tensors of two checkpoint folders byte by byte, without torch.

Used by the benchmark as a sanity check that the tools measured did the same job: the
in-memory baseline and prune-surgery should write the same bytes for every tensor (norm
weights may differ by one bf16 rounding step when they are rescaled), and mergekit's
depth-only passthrough and prune-surgery's should be identical.

Also :func:`shard_digests`: sha256 of every safetensors file of a folder (``gpu_check.py``).

Usage::

    python bench/compare.py DIR_A DIR_B      # prints a JSON summary, exits 1 on a difference
"""

from __future__ import annotations

import hashlib
import json
import mmap
import sys
from pathlib import Path


def read_header(path: Path) -> tuple[int, dict]:
    """(data start offset, header dict without ``__metadata__``) of a safetensors file."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def tensor_index(folder: Path) -> dict[str, tuple[Path, int, dict]]:
    """name -> (file, data start, header entry) over every ``*.safetensors`` of ``folder``."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        start, header = read_header(path)
        for name, entry in header.items():
            out[name] = (path, start, entry)
    return out


class _Maps:
    """Memory maps of files, opened on first use."""

    def __init__(self) -> None:
        self.maps: dict[Path, mmap.mmap] = {}

    def view(self, path: Path, start: int, entry: dict) -> memoryview:
        if path not in self.maps:
            with open(path, "rb") as fh:
                self.maps[path] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        a, b = entry["data_offsets"]
        return memoryview(self.maps[path])[start + a : start + b]

    def close(self) -> None:
        for m in self.maps.values():
            m.close()


def compare_folders(a: Path, b: Path, show: int = 5) -> dict:
    """Summary of how the tensors of ``a`` and ``b`` differ (names, dtypes, shapes, bytes)."""
    ta, tb = tensor_index(a), tensor_index(b)
    common = sorted(set(ta) & set(tb))
    identical, differ, meta_differ = 0, [], []
    maps = _Maps()
    try:
        for name in common:
            (pa, sa, ea), (pb, sb, eb) = ta[name], tb[name]
            if ea["dtype"] != eb["dtype"] or ea["shape"] != eb["shape"]:
                meta_differ.append(f"{name}: {ea['dtype']}{ea['shape']} vs {eb['dtype']}{eb['shape']}")
                continue
            va, vb = maps.view(pa, sa, ea), maps.view(pb, sb, eb)
            if va == vb:
                identical += 1
            else:
                differ.append(name)
            va.release()
            vb.release()
    finally:
        maps.close()
    only_a, only_b = sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))
    return {
        "tensors": len(common),
        "identical": identical,
        "bytes_differ": len(differ),
        "bytes_differ_names": differ[:show],
        "bytes_differ_only_norms": all(n.endswith("norm.weight") for n in differ),
        "shape_or_dtype_differ": meta_differ[:show],
        "only_in_a": only_a[:show],
        "only_in_b": only_b[:show],
        "same": not (differ or meta_differ or only_a or only_b),
    }


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(16 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def shard_digests(folder: Path) -> dict[str, str]:
    """sha256 of every ``*.safetensors`` file of ``folder`` by file name."""
    return {path.name: file_sha256(path) for path in sorted(folder.glob("*.safetensors"))}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python bench/compare.py DIR_A DIR_B", file=sys.stderr)
        return 2
    summary = compare_folders(Path(args[0]), Path(args[1]))
    print(json.dumps(summary, indent=2))
    return 0 if summary["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
