"""Read and write sizes in a config dict, by (possibly dotted) keys named in a table."""

from __future__ import annotations

import copy
from typing import Any

from .arch import Architecture, Segment
from .errors import ArchitectureError

_MISSING = object()


def config_get(config: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    """`config[key]`, where `key` may be dotted (``text_config.hidden_size``)."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(key)
            return default
        node = node[part]
    return node


def config_set(config: dict[str, Any], key: str, value: Any) -> None:
    """Set `config[key]` in place, where `key` may be dotted."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def copy_config(config: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a config dict."""
    return copy.deepcopy(config)


def space_key(arch: Architecture, space: str, config: dict[str, Any]) -> str:
    """The config key that holds a space's size (the first of its keys present)."""
    keys = arch.spaces[space].keys
    return next((k for k in keys if config_get(config, k, None) is not None), keys[0])


def source_sizes(arch: Architecture, config: dict[str, Any]) -> dict[str, int]:
    """Sizes of every space and fixed dim of a checkpoint, read from its config."""
    sizes: dict[str, int] = {}
    pending = dict(arch.spaces)
    for _ in range(len(pending) + 1):
        for name, space in list(pending.items()):
            value = config_get(config, space_key(arch, name, config), None)
            if value is None and space.default in sizes:
                value = sizes[space.default]
            if value is not None:
                sizes[name] = int(value)
                del pending[name]
    if pending:
        name = next(iter(pending))
        raise ArchitectureError(f"config.json has no {arch.spaces[name].keys[0]!r} (needed for the {name} space of {arch.family})")
    for name, dim in arch.dims.items():
        value = config_get(config, dim["key"], None) if dim.get("key") else None
        if value is None:
            default = dim.get("default")
            if isinstance(default, list):
                value = sizes[default[0]] // sizes[default[1]]
            elif isinstance(default, dict) and "sum" in default:  # e.g. MLA qk_head_dim = nope + rope
                value = sum(sizes[part] for part in default["sum"])
            elif isinstance(default, int):
                value = default
            elif isinstance(default, str):
                value = sizes[default]
            else:
                raise ArchitectureError(f"config.json has no {dim.get('key')!r}, needed by {arch.family}")
        sizes[name] = int(value)
    return sizes


def unit_size(arch: Architecture, space: str, sizes: dict[str, int]) -> int:
    """Elements per unit of a space along an axis (e.g. head_dim rows per head)."""
    unit = arch.spaces[space].unit if space in arch.spaces else 1
    return sizes[unit] if isinstance(unit, str) else int(unit)


def segment_width(arch: Architecture, seg: Segment, sizes: dict[str, int]) -> int:
    """Elements per unit of one axis segment: the segment's `@unit` or its space's, times `*k`."""
    unit = (int(seg.unit) if seg.unit.isdigit() else sizes[seg.unit]) if seg.unit else unit_size(arch, seg.space, sizes)
    return unit * seg.multiplier


def is_tied(arch: Architecture, config: dict[str, Any]) -> bool:
    """Whether the output embedding shares storage with the input embedding."""
    if arch.tie_key is None:
        return arch.tie_default
    return bool(config_get(config, arch.tie_key, arch.tie_default))
