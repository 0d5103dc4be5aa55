"""The output folder: checks, side files, and an atomic rename into place.

Everything is written into a temporary folder next to OUT and renamed to OUT only when
complete, so OUT appears whole or not at all; the source is never written to.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import OutputError
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
        if "/" in name or any(fnmatch.fnmatch(name, p) for p in SKIP):
            continue
        names.append(name)
    return names


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes `out` when the block succeeds."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.prune-surgery-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.prune-surgery-{os.getpid()}.old"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
