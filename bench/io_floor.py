"""The I/O floor: read every input byte, write the output's byte count, with plain file I/O.

No pruning tool can do less work than this: every kept byte of the input must be read
(here: all of it, as a streaming pruner that slices columns touches every page), and every
output byte written. Reads go through one reusable buffer (``readinto``), so the floor's own
memory stays at the buffer size; writes go to files of the same sizes as the real output.
Nothing is fsynced unless ``--fsync`` (the tools measured do not fsync either), so with a warm
page cache this is a memory-bandwidth floor, not a disk one.

Usage::

    python bench/io_floor.py SRC OUT --like PRUNED_DIR     # mirror the file sizes of PRUNED_DIR
    python bench/io_floor.py SRC OUT --bytes 2000000000    # one file of that size

Prints one JSON line: read_bytes, read_s, write_bytes, write_s, total_s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

BUFFER = 16 * 2**20


def input_files(src: Path) -> list[Path]:
    """Every regular file of the checkpoint folder ``src`` (shards, index, configs)."""
    return sorted(p for p in src.iterdir() if p.is_file())


def output_sizes(like: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``like`` (a pruned output folder)."""
    return {str(p.relative_to(like)): p.stat().st_size for p in sorted(like.rglob("*")) if p.is_file()}


def read_all(files: list[Path], buf: bytearray) -> int:
    """Read every byte of ``files`` into ``buf`` in turn; return the byte count."""
    view = memoryview(buf)
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total


def write_all(out: Path, sizes: dict[str, int], buf: bytearray, fsync: bool = False) -> int:
    """Write files of the given sizes under ``out`` from ``buf``; return the byte count."""
    view = memoryview(buf)
    total = 0
    for rel, size in sizes.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb", buffering=0) as fh:
            left = size
            while left:
                left -= fh.write(view[: min(left, len(view))])
            if fsync:
                os.fsync(fh.fileno())
        total += size
    return total


def io_floor(src: Path, out: Path, sizes: dict[str, int], fsync: bool = False) -> dict[str, float]:
    """Time reading all of ``src`` then writing ``sizes`` under ``out`` (created, must not exist)."""
    out.mkdir(parents=True)
    buf = bytearray(BUFFER)
    buf[:] = os.urandom(4096) * (BUFFER // 4096)
    t0 = time.perf_counter()
    nread = read_all(input_files(src), buf)
    t1 = time.perf_counter()
    nwritten = write_all(out, sizes, buf, fsync)
    t2 = time.perf_counter()
    return {"read_bytes": nread, "read_s": t1 - t0, "write_bytes": nwritten,
            "write_s": t2 - t1, "total_s": t2 - t0}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="read every input byte, write the output's byte count")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path, help="folder to write (replaced if present)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--like", type=Path, help="write files of the same sizes as this folder's")
    g.add_argument("--bytes", type=int, help="write one file of this many bytes")
    p.add_argument("--fsync", action="store_true")
    a = p.parse_args(argv)
    sizes = output_sizes(a.like) if a.like else {"out.bin": a.bytes}
    if a.out.exists():
        shutil.rmtree(a.out)
    print(json.dumps(io_floor(a.src, a.out, sizes, a.fsync)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
