"""Rewrite a Hugging Face ``tokenizer.json`` to a kept vocabulary.

- BPE: vocabulary filtered and renumbered; a merge survives when both parents and the result
  are kept (merge order, hence priority, unchanged);
- Unigram: pieces filtered in order (ids are positions), scores unchanged, ``unk_id`` remapped;
- WordPiece / WordLevel: vocabulary filtered and renumbered;
- added tokens, post-processor special ids and the padding id remapped.
Normalizer, pre-tokenizer and decoder carry no ids and are copied unchanged.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from prune_surgery.errors import TokenizerError
from prune_surgery.vocab.closure import parse_merge
from prune_surgery.vocab.files import import_tokenizers, model_type
from prune_surgery.vocab.keepfile import id_map, map_id


def _rewrite_bpe(model: dict[str, Any], mapping: dict[int, int]) -> None:
    vocab = {token: mapping[i] for token, i in model["vocab"].items() if i in mapping}
    prefix = model.get("continuing_subword_prefix") or ""
    merges = []
    for entry in model.get("merges") or []:
        left, right = parse_merge(entry)
        result = left + right[len(prefix) :] if prefix else left + right
        if left in vocab and right in vocab and result in vocab:
            merges.append(entry)
    model["vocab"] = vocab
    model["merges"] = merges


def _rewrite_unigram(model: dict[str, Any], mapping: dict[int, int]) -> None:
    model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i in mapping]
    if model.get("unk_id") is not None:
        model["unk_id"] = map_id(int(model["unk_id"]), mapping, "tokenizer.json unk_id")


def _rewrite_vocab_dict(model: dict[str, Any], mapping: dict[int, int]) -> None:
    model["vocab"] = {token: mapping[i] for token, i in model["vocab"].items() if i in mapping}


def _remap_post_processor(node: Any, mapping: dict[int, int]) -> None:
    """Remap in place the ids a post-processor names (TemplateProcessing, Bert/Roberta, Sequence)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("sep", "cls") and isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                value[1] = map_id(value[1], mapping, f"post-processor {key} token {value[0]!r}")
            elif key == "ids" and isinstance(value, list):
                node[key] = [map_id(int(v), mapping, "post-processor special token") for v in value]
            else:
                _remap_post_processor(value, mapping)
    elif isinstance(node, list):
        for value in node:
            _remap_post_processor(value, mapping)


def rewrite_tokenizer_json_data(data: dict[str, Any], kept_ids: Sequence[int]) -> dict[str, Any]:
    """A rewritten copy of a parsed tokenizer.json."""
    out = copy.deepcopy(data)
    mapping = id_map(kept_ids)
    model = out["model"]
    kind = model_type(out)
    unk = model.get("unk_token")
    if kind in ("BPE", "WordPiece", "WordLevel") and isinstance(unk, str) and unk in model["vocab"]:
        map_id(int(model["vocab"][unk]), mapping, f"tokenizer.json unknown token {unk!r}")
    if kind == "BPE":
        _rewrite_bpe(model, mapping)
    elif kind == "Unigram":
        _rewrite_unigram(model, mapping)
    else:
        _rewrite_vocab_dict(model, mapping)
    added = []
    for entry in out.get("added_tokens") or []:
        if int(entry["id"]) in mapping:
            added.append({**entry, "id": mapping[int(entry["id"])]})
    out["added_tokens"] = added
    _remap_post_processor(out.get("post_processor"), mapping)
    padding = out.get("padding")
    if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
        padding["pad_id"] = map_id(padding["pad_id"], mapping, f"padding token {padding.get('pad_token')!r}")
    return out


def rewrite_tokenizer_json_text(text: str, kept_ids: Sequence[int]) -> str:
    """Rewrite the text of a tokenizer.json and check that `tokenizers` loads the result."""
    out = json.dumps(rewrite_tokenizer_json_data(json.loads(text), kept_ids), ensure_ascii=False, indent=2)
    try:
        import_tokenizers().Tokenizer.from_str(out)
    except Exception as exc:  # tokenizers raises a plain Exception
        raise TokenizerError(f"the pruned tokenizer.json does not load in `tokenizers` ({exc})") from exc
    return out + "\n"
