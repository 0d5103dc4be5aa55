"""Count token frequencies on a corpus and choose the kept vocabulary (``keep-vocab.json``).

The kept set is: the most used tokens (``top_k`` and/or ``min_count``), plus every token that is
always kept (:mod:`prune_surgery.vocab.specials`), plus the BPE merge closure of all of them
(:mod:`prune_surgery.vocab.closure`).  ``top_k`` counts the tokens chosen by frequency only;
always-kept tokens and the closure come on top and are reported separately.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prune_surgery.errors import SpecError
from prune_surgery.vocab import closure
from prune_surgery.vocab.corpus import ProgressCallback, iter_batches, iter_texts
from prune_surgery.vocab.encoders import Encoder, primary_encoder
from prune_surgery.vocab.files import (
    TokenizerFiles,
    contains_type,
    find_tokenizer_files,
    load_spm_proto,
    load_tokenizer_json,
    model_type,
    read_optional_json,
)
from prune_surgery.vocab.specials import always_kept, reason_counts, tokenizer_size


@dataclass
class TokenCounts:
    """Token frequencies over a corpus."""

    counts: np.ndarray  # int64, one per id of the original vocabulary
    lines: int = 0
    tokens: int = 0
    files: list[str] = field(default_factory=list)
    tokenizer: str = ""


def original_vocab_size(files: TokenizerFiles) -> int:
    """The embedding rows of the source model: config.json ``vocab_size``, else the tokenizer size."""
    cfg = read_optional_json(files.folder / "config.json")
    size = cfg.get("vocab_size")
    if not isinstance(size, int):
        size = (cfg.get("text_config") or {}).get("vocab_size")
    return max(size if isinstance(size, int) else 0, tokenizer_size(files))


def tokenizer_kind(files: TokenizerFiles) -> str:
    """A short description of the tokenizer: ``sentencepiece-bpe``, ``bpe+byte-level``, ``unigram``..."""
    kinds: list[str] = []
    if files.hf_json is not None:
        data = load_tokenizer_json(files.hf_json)
        kind = model_type(data).lower()
        if data["model"].get("byte_fallback"):
            kind += "+byte-fallback"
        if kind == "bpe" and contains_type(data.get("pre_tokenizer"), "ByteLevel"):
            kind += "+byte-level"
        kinds.append(f"tokenizer.json:{kind}")
    if files.spm is not None:
        spec = load_spm_proto(files.spm).trainer_spec
        kind = "bpe" if spec.model_type == spec.BPE else "unigram" if spec.model_type == spec.UNIGRAM else "other"
        if spec.byte_fallback:
            kind += "+byte-fallback"
        kinds.append(f"sentencepiece:{kind}")
    return ",".join(kinds)


def count_tokens(
    encoder: Encoder,
    corpus: Sequence[Path],
    vocab_size: int,
    text_field: str = "text",
    progress: ProgressCallback | None = None,
    batch_size: int = 1024,
) -> TokenCounts:
    """Tokenize every text of ``corpus`` with ``encoder`` and count each id."""
    counts = np.zeros(max(vocab_size, encoder.size), dtype=np.int64)
    result = TokenCounts(counts, files=[str(p) for p in corpus], tokenizer=encoder.name)
    for batch in iter_batches(iter_texts(corpus, text_field, progress), batch_size):
        ids = [i for row in encoder.encode_batch(batch) for i in row]
        if ids:
            counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(counts))[: len(counts)]
        result.lines += len(batch)
        result.tokens += len(ids)
    return result


def select_by_count(counts: np.ndarray, top_k: int | None, min_count: int) -> list[int]:
    """Ids with at least ``min_count`` occurrences, the ``top_k`` most frequent of them (ties: lower id)."""
    if min_count < 1:
        raise SpecError(f"--min-count must be at least 1, got {min_count}")
    if top_k is not None and top_k < 0:
        raise SpecError(f"--top-k must be positive, got {top_k}")
    eligible = np.flatnonzero(counts >= min_count)
    order = eligible[np.lexsort((eligible, -counts[eligible]))]
    if top_k is not None:
        order = order[:top_k]
    return sorted(int(i) for i in order)


def build_keep_vocab(
    src: Path,
    corpus: Sequence[Path],
    top_k: int | None = None,
    min_count: int = 1,
    text_field: str = "text",
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Count ``corpus`` with the tokenizer of ``src`` and return the keep-vocab.json content."""
    files = find_tokenizer_files(src)
    vocab_size = original_vocab_size(files)
    encoder = primary_encoder(src)
    counted = count_tokens(encoder, corpus, vocab_size, text_field, progress)
    chosen = select_by_count(counted.counts, top_k, min_count)
    always = always_kept(files, vocab_size)
    before = set(chosen) | set(always)
    closed = closure.close(before, closure.bpe_models(files))
    kept = sorted(i for i in closed if i < vocab_size)
    nonzero = np.flatnonzero(counted.counts)
    return {
        "vocab": kept,
        "vocab_size": vocab_size,
        "kept": len(kept),
        "chosen_by_count": len(chosen),
        "always_kept": sorted(always),
        "always_kept_by_reason": reason_counts(always),
        "closure_added": len(closed) - len(before),
        "tokenizer_kind": tokenizer_kind(files),
        "counted_with": counted.tokenizer,
        "selection": {"top_k": top_k, "min_count": min_count},
        "corpus": {"files": counted.files, "lines": counted.lines, "tokens": counted.tokens},
        "covered_tokens": int(counted.counts[kept].sum()),
        "counts": {str(int(i)): int(counted.counts[i]) for i in nonzero},
    }
