"""Remap the special-token ids of config.json / generation_config.json after vocabulary pruning."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from prune_surgery.vocab.keepfile import id_map, map_id
from prune_surgery.vocab.specials import SPECIAL_ID_KEYS


def _remap_value(key: str, value: Any, mapping: dict[int, int]) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if value < 0 else map_id(value, mapping, f"config {key}")
    if isinstance(value, list):
        return [_remap_value(key, item, mapping) for item in value]
    return value


def _remap_in_place(cfg: dict[str, Any], mapping: dict[int, int]) -> None:
    for key, value in cfg.items():
        if key in SPECIAL_ID_KEYS:
            cfg[key] = _remap_value(key, value, mapping)
        elif isinstance(value, dict):
            _remap_in_place(value, mapping)


def remap_token_ids(cfg: dict[str, Any], kept_ids: Sequence[int]) -> dict[str, Any]:
    """A copy of ``cfg`` whose special-token ids are mapped from old to new ids.

    Handles bos/eos/pad/unk/decoder_start/sep/cls/mask token ids, as ints or lists of ints, at
    any nesting depth (``text_config``, ``decoder``, ...).  Negative ids and ``None`` are left
    alone.  Raises :class:`~prune_surgery.errors.TokenizerError` when a named id was not kept.
    ``vocab_size`` is not touched: the engine sets it to the embedding rows.
    """
    result = copy.deepcopy(cfg)
    _remap_in_place(result, id_map(kept_ids))
    return result
