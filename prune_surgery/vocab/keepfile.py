"""The kept vocabulary: reading ``keep-vocab.json`` / ``prune_surgery.json`` and the id map.

New id ``i`` is old id ``kept[i]``: ascending order is kept, so special tokens stay low and
byte pieces keep their relative order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prune_surgery.errors import SpecError, TokenizerError


def validate_kept_ids(ids: Any, where: str = "kept vocabulary", vocab_size: int | None = None) -> list[int]:
    """Check that ``ids`` is a non-empty, strictly increasing list of non-negative ints."""
    if not isinstance(ids, list) or not ids:
        raise SpecError(
            f"{where} must be a non-empty JSON list of token ids; regenerate it with `prune-surgery vocab count`"
        )
    for position, value in enumerate(ids):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpecError(f"{where}[{position}] = {value!r} is not a token id (a non-negative int); fix the file")
        if position and value <= ids[position - 1]:
            raise SpecError(
                f"{where} must be sorted and unique, but {value} follows {ids[position - 1]}; sort the list"
            )
    if vocab_size is not None and ids[-1] >= vocab_size:
        raise SpecError(
            f"{where} keeps id {ids[-1]} but the vocabulary has only {vocab_size} ids; "
            "the file was written for another model"
        )
    return list(ids)


def load_keep_vocab(path: Path) -> list[int]:
    """The sorted kept token ids stored in ``path``.

    Accepts the ``keep-vocab.json`` written by ``prune-surgery vocab count`` (``{"vocab": [...]}``)
    or a ``prune_surgery.json`` whose ``keep.vocab`` is that list.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SpecError(f"{path} does not exist; write it with `prune-surgery vocab count`") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path} is not valid JSON ({exc}); regenerate it with `prune-surgery vocab count`") from exc
    if isinstance(data, dict) and isinstance(data.get("keep"), dict) and "vocab" in data["keep"]:
        return validate_kept_ids(data["keep"]["vocab"], f"{path.name} keep.vocab")
    if isinstance(data, dict) and "vocab" in data:
        size = data.get("vocab_size")
        return validate_kept_ids(data["vocab"], f"{path.name} vocab", size if isinstance(size, int) else None)
    raise SpecError(
        f"{path} has neither a 'vocab' list nor 'keep.vocab'; pass the keep-vocab.json written by "
        "`prune-surgery vocab count` or the output's prune_surgery.json"
    )


def id_map(kept_ids: Sequence[int]) -> dict[int, int]:
    """Old id -> new id for a sorted kept list."""
    return {old: new for new, old in enumerate(kept_ids)}


def map_id(old: int, mapping: dict[int, int], what: str) -> int:
    """The new id of ``old``, or a :class:`TokenizerError` naming ``what`` when it was dropped."""
    try:
        return mapping[old]
    except KeyError:
        raise TokenizerError(
            f"{what} (id {old}) is not in the kept vocabulary; add {old} to the keep list "
            "(`prune-surgery vocab count` keeps it automatically)"
        ) from None
