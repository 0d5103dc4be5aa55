"""The kept-indices object: what `prune_surgery.json` records under "keep" and `--keep` reads.

``{"layers": [kept original layers], "hidden": [...], "vocab": [...],
"heads": {"<orig layer>": [...]}, "kv_heads": {...}, "ffn": {...}}`` — global spaces map to
a sorted list, scoped spaces to a dict keyed by original layer (``"<layer>.<expert>"`` for
per-expert spaces).  A space left out was not pruned.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from .errors import SpecError

Keep = dict[str, Union[list[int], dict[str, list[int]]]]


def _indices(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise SpecError(f"keep file: {where} must be a list of integers")
    if any(b <= a for a, b in zip(value, value[1:])):
        raise SpecError(f"keep file: {where} must be sorted and without duplicates")
    if value and value[0] < 0:
        raise SpecError(f"keep file: {where} has a negative index")
    return list(value)


def normalize_keep(obj: Any) -> Keep:
    """Validate the shape of a keep object (the whole prune_surgery.json, or just its keep)."""
    if isinstance(obj, dict) and isinstance(obj.get("keep"), dict):
        obj = obj["keep"]
    if not isinstance(obj, dict):
        raise SpecError("keep file must hold a JSON object of kept indices (or a prune_surgery.json)")
    keep: Keep = {}
    for space, value in obj.items():
        if isinstance(value, dict):
            keep[space] = {str(k): _indices(v, f"{space}[{k}]") for k, v in value.items()}
        else:
            keep[space] = _indices(value, space)
    return keep


def load_keep(source: Path | dict[str, Any]) -> Keep:
    """Read kept indices from a JSON file or an already parsed object."""
    if isinstance(source, dict):
        return normalize_keep(source)
    try:
        return normalize_keep(json.loads(Path(source).read_text()))
    except FileNotFoundError:
        raise SpecError(f"keep file {source} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"keep file {source} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise SpecError(f"keep file {source} is not UTF-8 text; give the JSON file of kept indices") from None


def kept(keep: Keep, space: str, scope: str = "") -> list[int] | None:
    """Kept indices of `space` (for `scope`, e.g. an original layer), or None if unpruned."""
    value = keep.get(space)
    if value is None:
        return None
    if isinstance(value, dict):
        return value.get(scope)
    return value
