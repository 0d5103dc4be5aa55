"""State that decoder layers hand to later layers through a shared mapping argument.

Some models pass every layer of a forward one mutable mapping (Gemma 4's KV sharing: a layer
stores its keys and values under its layer type and later layers of that type reuse them).  When
the layers run one at a time the mapping of each micro-batch fills as they run; a resumed
calibration has not run the layers before its first one, so the mapping's contents are saved with
the partial state and put back.  Nothing here names a family: every mapping among a layer's
keyword arguments is carried.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch


def carried_state(captured: dict[int, list[tuple[tuple, dict]]]) -> dict[str, torch.Tensor]:
    """The tensors held by the shared mappings of every micro-batch, flattened as
    ``carried/{start}/{argument}/{key}/{i}`` (``i`` the position in a tuple, ``t`` a lone tensor)."""
    out: dict[str, torch.Tensor] = {}
    for start, calls in captured.items():
        if not calls:
            continue
        for name, value in calls[0][1].items():
            if not isinstance(value, MutableMapping):
                continue
            for key, item in value.items():
                parts = enumerate(item) if isinstance(item, (tuple, list)) else [("t", item)]
                for i, tensor in parts:
                    if isinstance(tensor, torch.Tensor):
                        out[f"carried/{start}/{name}/{key}/{i}"] = tensor.detach().cpu().contiguous()
    return out


def restore_carried(captured: dict[int, list[tuple[tuple, dict]]], saved: dict[str, torch.Tensor], device: Any) -> None:
    """Put the saved contents back into the freshly recorded mappings (same micro-batches)."""
    items: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}
    for flat, tensor in saved.items():
        _, start, name, rest = flat.split("/", 3)
        key, i = rest.rsplit("/", 1)
        items.setdefault((int(start), name, key), {})[i] = tensor.to(device)
    for (start, name, key), parts in items.items():
        target = captured[start][0][1][name]
        target[key] = parts["t"] if "t" in parts else tuple(parts[i] for i in sorted(parts, key=int))
