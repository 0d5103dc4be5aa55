"""The source tokenizer's identity as llama.cpp's converter sees it, recorded at pruning time.

llama.cpp's ``convert_hf_to_gguf.py`` names a BPE pre-tokenizer (``tokenizer.ggml.pre``) by
hashing the token ids its tokenizer gives for a fixed check text.  Vocabulary pruning renumbers
ids, so a pruned tokenizer never hashes like its source although it splits text exactly as
the source does.  At pruning time we therefore encode the check text with the *source*
tokenizer and record the ids in ``OUT/prune_surgery.json`` under ``"source_tokenizer"``;
``prune-surgery gguf`` hands them to the converter, whose own table then names the
pre-tokenizer.  Needs only ``tokenizers`` (no torch, no transformers).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..storage import Storage

#: The record key in prune_surgery.json.
RECORD_KEY = "source_tokenizer"

#: llama.cpp's check text (``chktxt`` of ``get_vocab_base_pre``, unchanged since 2024).  The
#: converter's own text is compared with this one (by hash) before a recorded identity is used.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


def text_hash(text: str) -> str:
    """sha256 of a text's UTF-8 bytes (identifies the check text a record was made with)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def ids_hash(ids: list[int]) -> str:
    """The converter's ``chkhsh``: sha256 of ``str(ids)``."""
    return hashlib.sha256(str(list(ids)).encode()).hexdigest()


def identity_of_tokenizer_json(text: str) -> dict[str, Any] | None:
    """The identity of a Hugging Face tokenizer.json (its text), or None when it is not BPE."""
    data = json.loads(text)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not (model.get("type") == "BPE" or "merges" in model):
        return None  # SentencePiece / WordPiece / Unigram: the converter does not hash them
    from tokenizers import Tokenizer

    ids = Tokenizer.from_str(text).encode(CHECK_TEXT).ids
    return {"check_text_sha256": text_hash(CHECK_TEXT), "check_hash": ids_hash(ids), "check_ids": ids}


def source_tokenizer_entry(storage: Storage, vocab_pruned: bool) -> dict[str, Any]:
    """``{"source_tokenizer": ...}`` for prune_surgery.json, or ``{}`` when nothing needs recording.

    A source that is itself a prune-surgery output passes its recorded identity on (its own
    tokenizer no longer hashes like the original); otherwise the identity is computed from the
    source's tokenizer.json when the vocabulary is pruned now.
    """
    if storage.exists("prune_surgery.json"):
        try:
            earlier = json.loads(storage.read_bytes("prune_surgery.json")).get(RECORD_KEY)
        except (ValueError, AttributeError):
            earlier = None
        if isinstance(earlier, dict):
            return {RECORD_KEY: earlier}
    if not vocab_pruned or not storage.exists("tokenizer.json"):
        return {}
    identity = identity_of_tokenizer_json(storage.read_bytes("tokenizer.json").decode("utf-8"))
    return {RECORD_KEY: identity} if identity else {}
