"""Rewrite the side files of a Hugging Face tokenizer.

``tokenizer_config.json`` (``added_tokens_decoder`` keys and ``*_token_id`` values),
``special_tokens_map.json`` (token strings only, copied after checking), ``added_tokens.json``
(content -> id), and the slow-tokenizer vocabularies ``vocab.json`` + ``merges.txt`` (GPT-2
style) and ``vocab.txt`` (BERT style, one token per line in id order).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prune_surgery.vocab.closure import parse_merge
from prune_surgery.vocab.files import read_json, write_json
from prune_surgery.vocab.keepfile import id_map
from prune_surgery.vocab.remap import remap_token_ids


def rewrite_tokenizer_config(data: dict[str, Any], kept_ids: Sequence[int]) -> dict[str, Any]:
    """tokenizer_config.json with ``added_tokens_decoder`` and ``*_token_id`` keys remapped."""
    mapping = id_map(kept_ids)
    out = remap_token_ids(data, kept_ids)
    decoder = data.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        out["added_tokens_decoder"] = {
            str(mapping[int(key)]): value for key, value in decoder.items() if int(key) in mapping
        }
    return out


def rewrite_added_tokens(data: dict[str, int], kept_ids: Sequence[int]) -> dict[str, int]:
    """added_tokens.json (content -> id) restricted to kept tokens, ids remapped."""
    mapping = id_map(kept_ids)
    return {content: mapping[i] for content, i in data.items() if i in mapping}


def rewrite_vocab_json(data: dict[str, int], kept_ids: Sequence[int]) -> dict[str, int]:
    """vocab.json (token -> id) restricted to kept tokens, ids remapped."""
    mapping = id_map(kept_ids)
    return {token: mapping[i] for token, i in data.items() if i in mapping}


def rewrite_merges_txt(text: str, kept_tokens: set[str]) -> str:
    """merges.txt keeping the lines whose two parents and result are kept (header kept)."""
    lines = []
    for line in text.splitlines():
        if line.startswith("#version") or not line.strip():
            lines.append(line)
            continue
        left, right = parse_merge(line)
        if left in kept_tokens and right in kept_tokens and left + right in kept_tokens:
            lines.append(line)
    return "\n".join(lines) + "\n"


def rewrite_vocab_txt(text: str, kept_ids: Sequence[int]) -> str:
    """vocab.txt (one token per line, line number = id) restricted to kept lines."""
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return "".join(tokens[i] + "\n" for i in kept_ids if i < len(tokens))


def rewrite_side_files(src_dir: Path, out_dir: Path, kept_ids: Sequence[int]) -> list[str]:
    """Rewrite every side file present in ``src_dir`` into ``out_dir``; return the names written."""
    written: list[str] = []
    rewriters = {  # special_tokens_map.json names tokens by content, not id: carried as is
        "tokenizer_config.json": lambda data: rewrite_tokenizer_config(data, kept_ids),
        "special_tokens_map.json": lambda data: data,
        "added_tokens.json": lambda data: rewrite_added_tokens(data, kept_ids),
    }
    for name, rewrite in rewriters.items():
        if (src_dir / name).is_file():
            write_json(out_dir / name, rewrite(read_json(src_dir / name)))
            written.append(name)
    vocab_json = src_dir / "vocab.json"
    if vocab_json.is_file():
        vocab = rewrite_vocab_json(read_json(vocab_json), kept_ids)
        write_json(out_dir / vocab_json.name, vocab)
        written.append(vocab_json.name)
        merges = src_dir / "merges.txt"
        if merges.is_file():
            text = merges.read_text(encoding="utf-8")
            (out_dir / merges.name).write_text(rewrite_merges_txt(text, set(vocab)), encoding="utf-8")
            written.append(merges.name)
    vocab_txt = src_dir / "vocab.txt"
    if vocab_txt.is_file():
        text = vocab_txt.read_text(encoding="utf-8")
        (out_dir / vocab_txt.name).write_text(rewrite_vocab_txt(text, kept_ids), encoding="utf-8")
        written.append(vocab_txt.name)
    return written
