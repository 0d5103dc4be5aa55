"""Rewrite every tokenizer file of a checkpoint folder to a kept vocabulary.

This is the engine's entry point: ``rewrite_tokenizer_files(src, out, kept, vocab_size)``.
The kept set is checked before anything is written: required tokens present (unknown token,
named special tokens, byte-fallback pieces, byte-level base tokens) and, for BPE, closed under
merges.  Each rewritten file is reloaded by the library that will read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prune_surgery.errors import TokenizerError
from prune_surgery.vocab import closure
from prune_surgery.vocab.files import find_tokenizer_files, tiktoken_message
from prune_surgery.vocab.hfaux import rewrite_side_files
from prune_surgery.vocab.hfjson import rewrite_tokenizer_json_text
from prune_surgery.vocab.keepfile import validate_kept_ids
from prune_surgery.vocab.specials import (
    REQUIRED_REASONS,
    always_kept,
    token_ids,
    tokenizer_size,
)
from prune_surgery.vocab.spm import rewrite_spm_bytes


def check_kept_set(src_dir: Path, kept_ids: Sequence[int]) -> None:
    """Raise :class:`TokenizerError` when ``kept_ids`` breaks the tokenizer of ``src_dir``."""
    files = find_tokenizer_files(src_dir)
    kept = set(kept_ids)
    names = {i: t for t, i in token_ids(files).items()}
    for token_id, reason in always_kept(files).items():
        if reason in REQUIRED_REASONS and token_id not in kept:
            raise TokenizerError(
                f"the {reason} token {names.get(token_id, '?')!r} (id {token_id}) is not kept, which would break "
                "the tokenizer; add it to the keep list (`prune-surgery vocab count` keeps it automatically)"
            )
    broken = closure.violations(kept, closure.bpe_models(files), limit=1)
    if broken:
        name, token_id, missing = broken[0]
        raise TokenizerError(
            f"{name}: kept token {names.get(token_id, '?')!r} (id {token_id}) is built by BPE merges from "
            f"{names.get(missing, '?')!r} (id {missing}), which is not kept; the kept set must be closed under "
            "merges (use the keep-vocab.json written by `prune-surgery vocab count`)"
        )


def rewrite_tokenizer_files(src_dir: Path, out_dir: Path, kept_ids: Sequence[int], vocab_size: int) -> list[str]:
    """Write the tokenizer files of ``src_dir``, pruned to ``kept_ids``, into ``out_dir``.

    ``kept_ids`` are sorted original ids; new id ``i`` is old id ``kept_ids[i]``.  ``vocab_size``
    is the new embedding row count (``>= len(kept_ids)`` when padded).  Reads tokenizer.model,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json,
    vocab.json + merges.txt and vocab.txt where present; returns the names of the files written.
    A tiktoken vocabulary is not written (it cannot be pruned): with a tokenizer.json next to it,
    the tokenizer.json is rewritten; alone, it is refused with :class:`TokenizerError`.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    files = find_tokenizer_files(src_dir)
    kept = validate_kept_ids(list(kept_ids), "kept vocabulary")
    if vocab_size < len(kept):
        raise TokenizerError(
            f"new vocab_size {vocab_size} is smaller than the {len(kept)} kept tokens; pass at least {len(kept)}"
        )
    if files.hf_json is None and files.tiktoken is not None:
        raise TokenizerError(tiktoken_message(files.tiktoken))
    size = tokenizer_size(files)
    if kept[0] >= size:
        raise TokenizerError(f"no kept id is a token of the tokenizer in {src_dir} ({size} tokens); wrong keep list?")
    check_kept_set(src_dir, kept)
    written: list[str] = []
    if files.spm is not None:
        (out_dir / "tokenizer.model").write_bytes(rewrite_spm_bytes(files.spm.read_bytes(), kept))
        written.append("tokenizer.model")
    if files.hf_json is not None:
        text = rewrite_tokenizer_json_text(files.hf_json.read_text(encoding="utf-8"), kept)
        (out_dir / "tokenizer.json").write_text(text, encoding="utf-8")
        written.append("tokenizer.json")
    written += rewrite_side_files(src_dir, out_dir, kept)
    return written
