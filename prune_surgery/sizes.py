"""Read and write sizes in a config dict, by (possibly dotted) keys named in a table."""

from __future__ import annotations

import copy
from typing import Any

from .arch import Architecture, Segment
from .errors import ArchitectureError

_MISSING = object()


def config_get(config: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    """`config[key]`, where `key` may be dotted (``text_config.hidden_size``).

    A `*` part reads that field of every entry of a dict (``per_layer_config.*.head_dim``: the
    entries of a layer-indexed dict that set it); they must agree, and none setting it is absent."""
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part == "*" and isinstance(node, dict):
            rest = ".".join(parts[i + 1:])
            values = {repr(v): v for v in (config_get(e, rest, None) for e in node.values()) if v is not None}
            if len(values) > 1:
                raise ArchitectureError(f"config.json gives {key} different values ({', '.join(sorted(values))}); "
                                        "the table reads it as one size, so such a config is not supported")
            node = next(iter(values.values()), None)
            if node is None:
                break
            return node
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return node
    if default is _MISSING:
        raise KeyError(key)
    return default


def config_set(config: dict[str, Any], key: str, value: Any) -> None:
    """Set `config[key]` in place, where `key` may be dotted (a `*` part: in every entry that has the rest)."""
    *parents, last = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if part == "*":
            rest = ".".join([*parents[i + 1:], last])
            for entry in node.values():
                if isinstance(entry, dict) and config_get(entry, rest, None) is not None:
                    config_set(entry, rest, value)
            return
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
            base, _, times = (space.default or space.follows or "").partition("*")  # `default: hidden*4` (GPT-2's n_inner)
            if value is None and base in sizes:
                value = sizes[base] * int(times or 1)
            if value is not None:
                sizes[name] = _size(value, space_key(arch, name, config))
                del pending[name]
    if pending:
        name = next(iter(pending))
        raise ArchitectureError(f"config.json has no {arch.spaces[name].keys[0]!r} (needed for the {name} space of {arch.family})")
    for name, dim in arch.dims.items():
        keys = dim["key"] if isinstance(dim.get("key"), list) else [dim["key"]] if dim.get("key") else []
        value = next((v for v in (config_get(config, k, None) for k in keys) if v is not None), None)  # the first present
        if dim.get("free"):  # its length is read from each tensor (plan.py)
            continue
        if value is None and "product" in dim:  # `product: [a, b, b]`: dims listed before it, multiplied
            value = 1
            for factor in dim["product"]:
                value *= sizes[factor]
        if value is None:
            default = dim.get("default")
            if isinstance(default, list):
                value = sizes[default[0]] // sizes[default[1]] if sizes[default[1]] else 0
            elif isinstance(default, dict) and "sum" in default:  # e.g. MLA qk_head_dim = nope + rope
                value = sum(sizes[part] for part in default["sum"])
            elif isinstance(default, int):
                value = default
            elif isinstance(default, str):
                value = sizes[default]
            else:
                raise ArchitectureError(f"config.json has no {dim.get('key')!r}, needed by {arch.family}")
        # a fixed dim may be a flag (use_double_wide_mlp: a table's `require` rules read it as 0 or 1)
        sizes[name] = int(value) if isinstance(value, bool) else _size(value, str(dim.get("key") or name))
    return sizes


def _size(value: Any, key: str) -> int:
    """A config size: a non-negative integer (2.0 is accepted as 2), else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")) \
            or int(value) != value or value < 0:
        raise ArchitectureError(f"config.json gives {key} = {value!r}; it must be a non-negative integer, fix the config")
    return int(value)


def unit_size(arch: Architecture, space: str, sizes: dict[str, int], multiplier: int | str = 1) -> int:
    """Elements per unit of a space along an axis (e.g. head_dim rows per head), times an axis
    segment's multiplier (an integer or a fixed dim's name)."""
    unit = arch.spaces[space].unit if space in arch.spaces else 1
    return (sizes[unit] if isinstance(unit, str) else int(unit)) * _times(multiplier, sizes)


def _times(multiplier: int | str, sizes: dict[str, int]) -> int:
    return sizes[multiplier] if isinstance(multiplier, str) else multiplier


def segment_width(arch: Architecture, seg: Segment, sizes: dict[str, int]) -> int:
    """Elements per unit of one axis segment: the segment's `@unit` or its space's, times `*k`."""
    if not seg.unit:
        return unit_size(arch, seg.space, sizes, seg.multiplier)
    return (int(seg.unit) if seg.unit.isdigit() else sizes[seg.unit]) * _times(seg.multiplier, sizes)


def is_tied(arch: Architecture, config: dict[str, Any]) -> bool:
    """Whether the output embedding shares storage with the input embedding."""
    if arch.tie_key is None:
        return arch.tie_default
    return bool(config_get(config, arch.tie_key, arch.tie_default))
