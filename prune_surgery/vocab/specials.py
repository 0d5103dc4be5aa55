"""Tokens that vocabulary pruning always keeps, whatever their count in the corpus.

- unknown, control, user-defined and added tokens, and every special token named in
  tokenizer_config.json / special_tokens_map.json;
- bos/eos/pad/unk/... ids named in config.json or generation_config.json;
- all 256 byte-fallback pieces ``<0x00>``..``<0xFF>`` (SentencePiece, or tokenizer.json with
  ``byte_fallback``) and all 256 byte-level base tokens (GPT-2 / Qwen style BPE), so every text
  still encodes and decodes losslessly;
- for Unigram models, the piece with the lowest score (the unknown-token penalty is computed
  from it) and, in SentencePiece, the one with the highest (user-defined pieces are scored from
  it): keeping them keeps Viterbi's choices unchanged for covered text.

Some of these are *required*: a rewrite refuses a kept set without them (see
:data:`REQUIRED_REASONS`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2

from prune_surgery.vocab.files import (
    CONFIG_FILE_NAMES,
    TokenizerFiles,
    byte_piece,
    bytes_to_unicode,
    contains_type,
    hf_model_ids,
    hf_token_ids,
    load_spm_proto,
    load_tokenizer_json,
    model_type,
    read_optional_json,
)

_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece

#: Config keys holding special-token ids (an int, or a list of ints).
SPECIAL_ID_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "unk_token_id",
    "decoder_start_token_id",
    "sep_token_id",
    "cls_token_id",
    "mask_token_id",
)

#: Reasons for which a rewrite refuses a kept set that lacks the token.
REQUIRED_REASONS = frozenset({"unknown", "named special", "byte fallback", "byte-level base"})


def iter_special_ids(cfg: Any) -> Iterator[int]:
    """Every special-token id named in a config dict, nested dicts (``text_config``) included."""
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            if key in SPECIAL_ID_KEYS:
                values = value if isinstance(value, list) else [value]
                for item in values:
                    if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                        yield item
            elif isinstance(value, dict):
                yield from iter_special_ids(value)


def named_special_tokens(folder: Path) -> list[str]:
    """Contents of the special tokens named in tokenizer_config.json and special_tokens_map.json."""
    names: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, dict) and isinstance(value.get("content"), str):
            names.append(value["content"])
        elif isinstance(value, list):
            for item in value:
                add(item)
        elif isinstance(value, dict):
            for item in value.values():
                add(item)

    for file_name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = read_optional_json(folder / file_name)
        for key, value in data.items():
            if key.endswith("_token") or key in ("additional_special_tokens", "extra_special_tokens"):
                add(value)
    return names


def token_ids(files: TokenizerFiles) -> dict[str, int]:
    """Token string -> id over every tokenizer of the folder (SentencePiece pieces, then tokenizer.json)."""
    ids: dict[str, int] = {}
    if files.spm is not None:
        for i, piece in enumerate(load_spm_proto(files.spm).pieces):
            ids.setdefault(piece.piece, i)
    if files.hf_json is not None:
        ids.update(hf_token_ids(load_tokenizer_json(files.hf_json)))
    return ids


def tokenizer_size(files: TokenizerFiles) -> int:
    """One more than the largest token id of any tokenizer in the folder."""
    size = 0
    if files.spm is not None:
        size = len(load_spm_proto(files.spm).pieces)
    if files.hf_json is not None:
        ids = hf_token_ids(load_tokenizer_json(files.hf_json))
        size = max(size, max(ids.values(), default=-1) + 1)
    return size


def _spm_always(proto: sentencepiece_model_pb2.ModelProto) -> dict[int, str]:
    kept: dict[int, str] = {}
    reasons = {
        _Piece.UNKNOWN: "unknown",
        _Piece.CONTROL: "control",
        _Piece.USER_DEFINED: "added",
        _Piece.BYTE: "byte fallback",
    }
    normal: list[tuple[float, int]] = []
    for i, piece in enumerate(proto.pieces):
        if piece.type in reasons:
            kept[i] = reasons[piece.type]
        elif piece.type == _Piece.NORMAL:
            normal.append((piece.score, i))
    if proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM and normal:
        # SentencePiece derives the unknown penalty from the lowest normal score and the score of
        # user-defined pieces from the highest: both must survive for Viterbi to choose as before
        kept.setdefault(min(normal)[1], "unigram floor")
        kept.setdefault(max(normal, key=lambda item: (item[0], -item[1]))[1], "unigram ceiling")
    return kept


def _hf_always(data: dict[str, Any]) -> dict[str, int | str]:
    """Token contents (or ids, for Unigram's floor) that a tokenizer.json always keeps, by reason."""
    kept: dict[int, str] = {}
    model = data["model"]
    kind = model_type(data)
    ids = hf_model_ids(data)
    for added in data.get("added_tokens") or []:
        kept[int(added["id"])] = "special" if added.get("special") else "added"
    unk = model.get("unk_token")
    if kind == "Unigram" and model.get("unk_id") is not None:
        kept[int(model["unk_id"])] = "unknown"
    elif isinstance(unk, str) and unk in ids:
        kept[ids[unk]] = "unknown"
    if model.get("byte_fallback"):
        for value in range(256):
            if byte_piece(value) in ids:
                kept.setdefault(ids[byte_piece(value)], "byte fallback")
    byte_level = contains_type(data.get("pre_tokenizer"), "ByteLevel") or contains_type(
        data.get("decoder"), "ByteLevel"
    )
    if kind == "BPE" and byte_level:
        for char in bytes_to_unicode().values():
            if char in ids:
                kept.setdefault(ids[char], "byte-level base")
    if kind == "Unigram" and model["vocab"]:
        floor = min(range(len(model["vocab"])), key=lambda i: model["vocab"][i][1])
        kept.setdefault(floor, "unigram floor")
    for special in _post_processor_ids(data.get("post_processor")):
        kept.setdefault(special, "special")
    return kept  # type: ignore[return-value]


def _post_processor_ids(node: Any) -> Iterator[int]:
    """Ids named by a post-processor (TemplateProcessing, BertProcessing, Sequence, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("sep", "cls") and isinstance(value, list) and len(value) == 2:
                yield int(value[1])
            elif key == "ids" and isinstance(value, list):
                yield from (int(v) for v in value)
            else:
                yield from _post_processor_ids(value)
    elif isinstance(node, list):
        for value in node:
            yield from _post_processor_ids(value)


def always_kept(files: TokenizerFiles, vocab_size: int | None = None) -> dict[int, str]:
    """Id -> reason for every token the folder's tokenizers and configs require to be kept.

    ``vocab_size`` (the embedding rows) bounds the config ids; ids at or past it are ignored.
    """
    kept: dict[int, str] = {}
    if files.spm is not None:
        kept.update(_spm_always(load_spm_proto(files.spm)))
    if files.hf_json is not None:
        for token_id, reason in _hf_always(load_tokenizer_json(files.hf_json)).items():
            kept.setdefault(int(token_id), str(reason))
    ids = token_ids(files)
    for name in named_special_tokens(files.folder):
        if name in ids:
            kept[ids[name]] = "named special"
    decoder = read_optional_json(files.folder / "tokenizer_config.json").get("added_tokens_decoder") or {}
    for key, entry in decoder.items():
        reason = "special" if isinstance(entry, dict) and entry.get("special") else "added"
        kept.setdefault(int(key), reason)
    for file_name in CONFIG_FILE_NAMES:
        for token_id in iter_special_ids(read_optional_json(files.folder / file_name)):
            if vocab_size is None or token_id < vocab_size:
                kept.setdefault(token_id, "config")
    return dict(sorted(kept.items()))


def reason_counts(kept: Mapping[int, str]) -> dict[str, int]:
    """How many always-kept tokens there are for each reason (for reports)."""
    counts: dict[str, int] = {}
    for reason in kept.values():
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))
