"""The output folder: checks, side files, and an atomic rename into place.

Everything is written into a temporary folder next to OUT and renamed to OUT only when
complete, so OUT appears whole or not at all; the source is never written to.
"""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
import sys
from pathlib import Path
from typing import Iterator

from .errors import OutputError
from .guard import Note, check_space, clean_leftovers, is_disk_full, out_lock, replace_folder, temp_name
from .render import human_bytes
from .sink import ShardLayout, header_bytes
from .storage import Storage

#: files never copied from the source: weights, indexes, the config we rewrite, the card
SKIP = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.h5", "*.msgpack", "*.ckpt", "*.onnx",
    "*.index.json", "config.json", "README.md", "prune_surgery.json", ".*", "*/.*",
)
#: tokenizer files, rewritten instead of copied when the vocabulary is pruned
TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "*.tiktoken", "tiktoken.model",
)


def is_tokenizer_file(name: str) -> bool:
    """Whether a side file belongs to the tokenizer (rewritten when the vocabulary is pruned)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in TOKENIZER_FILES)


def check_output(out: Path, source_root: Path | None, overwrite: bool) -> None:
    """Refuse an OUT that lies inside the source, is a file, or is not empty (unless overwrite)."""
    out = out.resolve()
    if source_root is not None:
        src = source_root.resolve()
        if out == src or src in out.parents:
            raise OutputError(f"output {out} lies inside the source folder {src}; choose a folder outside it")
        if out in src.parents:
            raise OutputError(f"output {out} contains the source folder {src}; choose another folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is a file; choose a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"output folder {out} exists and is not empty; pass --overwrite to replace it")


def side_files(storage: Storage) -> list[str]:
    """Top-level source files to carry over (tokenizer, generation config, templates...)."""
    names = []
    for name in storage.list_files():
        if "/" in name or "\\" in name or any(fnmatch.fnmatch(name, p) for p in SKIP):  # never a path
            continue
        names.append(name)
    return names


def bytes_needed(shards: list[ShardLayout], storage: Storage, kept_indices: int = 0) -> int:
    """Bytes a run writes into OUT: every shard (header + data), the index, side files, records.

    Shards are exact (the plan knows every header); side files count at their source size, and
    config.json, the index and prune_surgery.json get 1 MiB plus 12 bytes per kept index.
    """
    weights = sum(len(header_bytes(s.tensors)) + s.nbytes for s in shards)
    index = sum(len(t.name) + len(s.file) + 8 for s in shards for t in s.tensors) if len(shards) > 1 else 0
    return weights + index + sum(storage.size(n) for n in side_files(storage)) + (1 << 20) + 12 * kept_indices


def _stderr_note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr)


@contextlib.contextmanager
def atomic_folder(out: Path, *, overwrite: bool | None = None, needed: int | None = None,
                  note: Note | None = None) -> Iterator[Path]:
    """Yield a temporary folder that becomes `out` when the block succeeds.

    While the block runs, `out`'s lock is held (a second run into it is refused) and leftovers of
    killed runs next to it are cleaned first.  Under the lock, `out` is checked again when
    `overwrite` is given, and its filesystem must have `needed` bytes free when that is given.
    A disk that fills up anyway is one OutputError; `out` is then untouched.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out_lock(out):
        clean_leftovers(out, note or _stderr_note)
        if overwrite is not None:
            check_output(out, None, overwrite)
        if needed is not None:
            check_space(out, needed)
        tmp = temp_name(out, "tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            replace_folder(tmp, out)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(exc):
                need = f"; it needs {human_bytes(needed)} in all" if needed else ""
                raise OutputError(f"the disk of {out} filled up while writing ({exc.strerror}){need}; nothing was "
                                  "written to it: free some space or choose an output folder on another disk") from None
            raise
