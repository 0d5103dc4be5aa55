"""The packed token file: the data tokenized once, then read by step, deterministically.

``tokens.bin`` holds every document's token ids (uint32, EOS after each document) end to end;
``tokens.json`` says what they came from (the data files' hash, the tokenizer's hash, counts).
The stream is cut into non-overlapping windows of ``seq_len`` tokens (a BOS in front of each
when the tokenizer adds one by default, as in calibration).  Item ``i`` of the training set is
window ``perm_e[i mod n]`` of epoch ``e = i div n``, where ``perm_e`` is a permutation seeded by
(seed, e): item ``i`` is a pure function of ``i``, so global batch ``k`` is items
``[k*B, (k+1)*B)`` and a run resumed at batch ``k`` reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..calibrate.data import _documents, _paths, data_hash, default_bos
from ..errors import SpecError

FORMAT = 1


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's vocabulary and special tokens (what the ids mean)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    text = json.dumps([vocab, tokenizer.bos_token_id, tokenizer.eos_token_id])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class TokenFile:
    """A packed token stream on disk, memory-mapped."""

    folder: Path
    meta: dict[str, Any]

    @property
    def ids(self) -> np.ndarray:
        """All token ids (uint32, memory-mapped)."""
        return np.memmap(self.folder / "tokens.bin", dtype=np.uint32, mode="r")

    def windows(self, seq_len: int) -> int:
        """How many whole windows of `seq_len` tokens the stream holds."""
        body = seq_len - (self.meta["bos"] is not None)
        return self.meta["tokens"] // body if body > 0 else 0

    def window(self, index: int, seq_len: int) -> np.ndarray:
        """Window `index` (int64 [seq_len])."""
        bos = self.meta["bos"]
        body = seq_len - (bos is not None)
        part = np.asarray(self.ids[index * body : (index + 1) * body], dtype=np.int64)
        return np.concatenate([[bos], part]) if bos is not None else part


def build_token_file(tokenizer: Any, data: Sequence[str | Path], folder: Path, text_field: str = "text") -> TokenFile:
    """Tokenize `data` into `folder` (reused when it already holds the same data and tokenizer)."""
    paths = _paths(data)
    wanted = {"format": FORMAT, "data_hash": data_hash(paths), "tokenizer_hash": tokenizer_hash(tokenizer)}
    meta_path = folder / "tokens.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in wanted.items()):
            return TokenFile(folder, meta)
    folder.mkdir(parents=True, exist_ok=True)
    eos = tokenizer.eos_token_id
    docs = tokens = 0
    tmp = folder / "tokens.bin.part"
    with open(tmp, "wb") as f:
        for doc in _documents(paths, text_field):
            ids = tokenizer(doc, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            f.write(np.asarray(ids, dtype=np.uint32).tobytes())
            docs, tokens = docs + 1, tokens + len(ids)
    os.replace(tmp, folder / "tokens.bin")
    meta = {**wanted, "files": [str(p) for p in paths], "documents": docs, "tokens": tokens,
            "bos": default_bos(tokenizer), "eos": eos}
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return TokenFile(folder, meta)


def order(windows: int, epoch: int, seed: int) -> np.ndarray:
    """The order of the windows in `epoch` (a permutation seeded by seed and epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(windows)


class PackedDataset:
    """Map-style dataset over a token file: item i -> {"input_ids", "labels"} (see the module doc).

    `length` items (steps x global batch); `shuffle=False` reads windows in file order (held-out).
    """

    def __init__(self, tokens: TokenFile, seq_len: int, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.tokens, self.seq_len, self.length, self.seed, self.shuffle = tokens, seq_len, length, seed, shuffle
        self.n = tokens.windows(seq_len)
        if self.n < 1:
            raise SpecError(f"the data holds {tokens.meta['tokens']} tokens, too few for one window of {seq_len}; "
                            "give more text or a smaller --seq-len")
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def index(self, item: int) -> int:
        """The window read by `item`."""
        epoch, within = divmod(item, self.n)
        if not self.shuffle:
            return within
        if epoch not in self._orders:
            self._orders = {epoch: order(self.n, epoch, self.seed)}
        return int(self._orders[epoch][within])

    def __getitem__(self, item: int) -> dict[str, Any]:
        import torch

        if not 0 <= item < self.length:
            raise IndexError(item)
        ids = torch.from_numpy(self.tokens.window(self.index(item), self.seq_len))
        return {"input_ids": ids, "labels": ids.clone()}
