"""Stream the lines of a text corpus: plain text, JSONL with a text field, gzip of either.

Files are read lazily in batches so that a corpus of any size goes through in constant
memory.  Progress is reported in bytes of the files on disk (compressed bytes for gzip), so
a progress bar knows its total before the first line is read.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from prune_surgery.errors import SpecError

#: Called with the number of bytes read since the previous call.
ProgressCallback = Callable[[int], None]


def expand_corpus(patterns: Sequence[str | Path]) -> list[Path]:
    """Expand glob patterns (``data/*.jsonl``) into existing files, keeping the given order."""
    paths: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        matches = sorted(glob.glob(text)) if glob.has_magic(text) else [text]
        if not matches:
            raise SpecError(f"corpus pattern {text!r} matches no file; check the path")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise SpecError(f"corpus file {path} does not exist; check the path")
            if path not in paths:
                paths.append(path)
    if not paths:
        raise SpecError("no corpus given; pass --corpus FILE (plain text, JSONL or .gz)")
    return paths


def is_gzip(path: Path) -> bool:
    """True when the file starts with the gzip magic number."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def is_jsonl(path: Path) -> bool:
    """True for ``.jsonl`` / ``.json`` / ``.ndjson`` files, with or without ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in (".jsonl", ".json", ".ndjson")


class _CountingReader(io.RawIOBase):
    """A binary file wrapper that reports how many bytes were read from disk."""

    def __init__(self, raw: IO[bytes], progress: ProgressCallback | None) -> None:
        self._raw = raw
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        if self._progress is not None and data:
            self._progress(len(data))
        return len(data)


def _field(record: object, field: str, where: str) -> str | None:
    """The text under ``field`` (dotted for nested objects) of one JSONL record."""
    value = record
    for key in field.split("."):
        if not isinstance(value, dict) or key not in value:
            raise SpecError(f"{where} has no field {field!r}; pass --text-field with the right name")
        value = value[key]
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(f"{where}: field {field!r} is not a string; pass --text-field naming a text field")
    return value


def iter_file_texts(path: Path, text_field: str = "text", progress: ProgressCallback | None = None) -> Iterator[str]:
    """The texts of one corpus file: each non-empty line, or each JSONL record's ``text_field``."""
    raw = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    try:
        counted = io.BufferedReader(_CountingReader(raw, progress), buffer_size=1 << 20)
        binary: IO[bytes] = gzip.GzipFile(fileobj=counted) if is_gzip(path) else counted
        text = io.TextIOWrapper(binary, encoding="utf-8", errors="strict", newline="\n")
        jsonl = is_jsonl(path)
        for number, line in enumerate(text, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if jsonl:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SpecError(f"{path}:{number} is not valid JSON ({exc.msg}); fix or remove the line") from exc
                value = _field(record, text_field, f"{path}:{number}")
                if value:
                    yield value
            else:
                yield line
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path} is not UTF-8 text ({exc.reason}); convert it to UTF-8") from exc
    except (OSError, EOFError) as exc:
        raise SpecError(f"cannot read {path} ({exc}); check that the file is complete") from exc
    finally:
        raw.close()


def iter_texts(
    paths: Sequence[Path], text_field: str = "text", progress: ProgressCallback | None = None
) -> Iterator[str]:
    """The texts of every corpus file, in order."""
    for path in paths:
        yield from iter_file_texts(path, text_field, progress)


def iter_batches(texts: Iterator[str], batch_size: int = 1024) -> Iterator[list[str]]:
    """Group texts into lists of ``batch_size`` for batched tokenization."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def total_bytes(paths: Sequence[Path]) -> int:
    """Size on disk of all corpus files (the progress bar's total)."""
    return sum(path.stat().st_size for path in paths)
