"""Calibration and evaluation text: files in, windows of token ids out.

Files are plain text, JSONL (one record per line, the text under ``--text-field``) or gzip of
either (the corpus readers of the vocabulary tools).  A plain-text file is one document; a JSONL
file holds one document per record.

- calibration: documents are tokenized and concatenated (EOS between them), then packed into N
  windows of T tokens; when the tokenizer adds a BOS by default, every window starts with it.
- evaluation: the convention of perplexity tables: the text of all files, tokenized as one
  string without special tokens, the first N tokens cut into non-overlapping windows of T, a BOS
  before every window when the tokenizer adds one by default.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import SpecError
from ..vocab.corpus import expand_corpus, is_gzip, is_jsonl, iter_file_texts


@dataclass(frozen=True)
class Windows:
    """Token windows [n, length] and where they came from."""

    ids: np.ndarray  # int64 [n, length]
    data_hash: str  # sha256 of the files' bytes, in order
    files: tuple[str, ...]
    bos: int | None  # the BOS id each window starts with, if any
    tokens_available: int


def _documents(paths: Sequence[Path], text_field: str) -> list[str]:
    docs = []
    for path in paths:
        if is_jsonl(path):
            docs.extend(iter_file_texts(path, text_field))
        else:
            raw = gzip.open(path, "rb").read() if is_gzip(path) else path.read_bytes()
            docs.append(raw.decode("utf-8", errors="replace"))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise SpecError(f"the data files ({', '.join(map(str, paths))}) hold no text; give plain text or JSONL with --text-field")
    return docs


def data_hash(paths: Sequence[Path]) -> str:
    """sha256 over the bytes of every data file, in order (names left out)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_tokenizer(root: Path) -> Any:
    """The checkpoint's own tokenizer (transformers AutoTokenizer)."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(root))
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot load the tokenizer of {root} ({str(exc).splitlines()[0]}); "
                        "calibration and eval need the checkpoint's tokenizer files") from None


def default_bos(tokenizer: Any) -> int | None:
    """The BOS id the tokenizer puts in front by default, or None."""
    bos = tokenizer.bos_token_id
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bos if bos is not None and len(with_special) > len(plain) and with_special[0] == bos else None


def _paths(data: Sequence[str | Path]) -> list[Path]:
    if not data:
        raise SpecError("no data given; pass --data FILE (plain text, JSONL or .gz)")
    try:
        return expand_corpus(data)
    except SpecError as exc:
        raise SpecError(str(exc).replace("corpus", "data")) from None


def calibration_windows(tokenizer: Any, data: Sequence[str | Path], samples: int, seq_len: int,
                        text_field: str = "text") -> Windows:
    """`samples` packed windows of `seq_len` tokens (fewer if the data is short; at least one)."""
    paths = _paths(data)
    bos = default_bos(tokenizer)
    eos = tokenizer.eos_token_id
    body = seq_len - (bos is not None)
    if body < 1:
        raise SpecError(f"--seq-len {seq_len} leaves no room for text after the BOS token")
    stream: list[int] = []
    for doc in _documents(paths, text_field):
        stream.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
        if len(stream) >= samples * body:
            break
    n = min(samples, len(stream) // body)
    if n < 1:
        raise SpecError(f"the data holds {len(stream)} tokens, too few for one window of {seq_len}; "
                        "give more text or a smaller --seq-len")
    ids = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    if bos is not None:
        ids = np.concatenate([np.full((n, 1), bos, dtype=np.int64), ids], axis=1)
    return Windows(ids, data_hash(paths), tuple(map(str, paths)), bos, len(stream))


def eval_windows(tokenizer: Any, data: Sequence[str | Path], seq_len: int, max_tokens: int | None,
                 text_field: str = "text") -> Windows:
    """Non-overlapping windows of `seq_len` text tokens (plus a BOS before each when the tokenizer adds one)."""
    paths = _paths(data)
    text = "\n\n".join(_documents(paths, text_field))
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n = len(stream) // seq_len
    if n < 1:
        raise SpecError(f"the data holds {len(stream)} tokens, too few for one window of {seq_len}; "
                        "give more text, a larger --max-tokens or a smaller --seq-len")
    ids = np.asarray(stream[: n * seq_len], dtype=np.int64).reshape(n, seq_len)
    bos = default_bos(tokenizer)
    if bos is not None:
        ids = np.concatenate([np.full((n, 1), bos, dtype=np.int64), ids], axis=1)
    return Windows(ids, data_hash(paths), tuple(map(str, paths)), bos, len(stream))
