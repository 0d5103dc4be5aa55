"""Vocabulary pruning, tokenizer side.

- :func:`build_keep_vocab` counts token use on a corpus and chooses the kept ids
  (``prune-surgery vocab count``), closed under BPE merges, with every required token.
- :func:`load_keep_vocab` reads those ids back (``keep-vocab.json`` or ``prune_surgery.json``).
- :func:`rewrite_tokenizer_files` writes the pruned tokenizer files (SentencePiece model,
  tokenizer.json, side files); :func:`remap_token_ids` remaps config special-token ids.
- :func:`vocab_figures` checks the guarantee on a held-out corpus (``prune-surgery vocab verify``).

New id ``i`` is always old id ``kept[i]`` (kept ids sorted ascending).
"""

from __future__ import annotations

from prune_surgery.vocab.count import build_keep_vocab
from prune_surgery.vocab.keepfile import id_map, load_keep_vocab
from prune_surgery.vocab.remap import remap_token_ids
from prune_surgery.vocab.rewrite import check_kept_set, rewrite_tokenizer_files
from prune_surgery.vocab.verify import VocabFigures, vocab_figures

__all__ = [
    "VocabFigures",
    "build_keep_vocab",
    "check_kept_set",
    "id_map",
    "load_keep_vocab",
    "remap_token_ids",
    "rewrite_tokenizer_files",
    "vocab_figures",
]
