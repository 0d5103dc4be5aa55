"""The tokenizers of a folder as plain encoders: text in, ids out, ids back to text.

SentencePiece models are run with ``sentencepiece.SentencePieceProcessor`` and Hugging Face
``tokenizer.json`` files with ``tokenizers.Tokenizer``; ``transformers`` is never needed.
Special tokens are not added: counting and verification look at what the text itself becomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import sentencepiece

from prune_surgery.errors import TokenizerError
from prune_surgery.vocab.files import (
    contains_type,
    find_tokenizer_files,
    hf_token_ids,
    import_tokenizers,
    load_spm_proto,
    load_tokenizer_json,
    model_type,
)

if TYPE_CHECKING:
    import tokenizers


class Encoder(Protocol):
    """What counting and verification need from a tokenizer."""

    name: str
    size: int
    lossless: bool

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids."""
        ...


@dataclass
class SentencePieceEncoder:
    """A ``tokenizer.model`` run by SentencePiece itself."""

    processor: sentencepiece.SentencePieceProcessor
    name: str = "tokenizer.model"
    size: int = 0
    lossless: bool = False

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no bos/eos)."""
        return self.processor.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids."""
        return self.processor.decode(list(ids))


@dataclass
class HFEncoder:
    """A ``tokenizer.json`` run by the `tokenizers` library."""

    tokenizer: tokenizers.Tokenizer
    name: str = "tokenizer.json"
    size: int = 0
    lossless: bool = False

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no post-processor specials)."""
        return [enc.ids for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids, special tokens included."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def load_spm_encoder(path: Path) -> SentencePieceEncoder:
    """Load a SentencePiece model as an encoder."""
    proto = load_spm_proto(path)
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(proto.SerializeToString())
    except Exception as exc:  # SentencePiece reports failures as RuntimeError/OSError
        raise TokenizerError(f"SentencePiece cannot load {path} ({exc}); restore the original file") from exc
    lossless = proto.trainer_spec.byte_fallback
    return SentencePieceEncoder(processor, size=processor.get_piece_size(), lossless=lossless)


def load_hf_encoder(path: Path) -> HFEncoder:
    """Load a tokenizer.json as an encoder."""
    data = load_tokenizer_json(path)
    try:
        tokenizer = import_tokenizers().Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a plain Exception on bad files
        raise TokenizerError(f"`tokenizers` cannot load {path} ({exc}); restore the original file") from exc
    ids = hf_token_ids(data)
    size = max(ids.values()) + 1 if ids else 0
    lossless = False
    if model_type(data) in ("BPE", "Unigram"):
        lossless = bool(data["model"].get("byte_fallback")) or contains_type(data.get("pre_tokenizer"), "ByteLevel")
    return HFEncoder(tokenizer, size=size, lossless=lossless)


def load_encoders(folder: Path) -> list[Encoder]:
    """Every tokenizer of ``folder`` as an encoder: tokenizer.json first, then tokenizer.model."""
    files = find_tokenizer_files(folder)
    encoders: list[Encoder] = []
    if files.hf_json is not None:
        encoders.append(load_hf_encoder(files.hf_json))
    if files.spm is not None:
        encoders.append(load_spm_encoder(files.spm))
    return encoders


def primary_encoder(folder: Path) -> Encoder:
    """The tokenizer used for counting: tokenizer.json when present (what `transformers` loads)."""
    return load_encoders(folder)[0]
