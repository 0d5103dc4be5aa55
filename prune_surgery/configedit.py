"""Rewrite config.json for the pruned shape so that stock transformers loads it as is."""

from __future__ import annotations

from typing import Any

from .arch import Architecture
from .errors import SpecError
from .keepfile import Keep
from .sizes import config_get, config_set, copy_config, space_key


def rewrite_config(
    arch: Architecture, config: dict[str, Any], sizes: dict[str, int], targets: dict[str, int],
    keep: Keep, vocab_rows: int,
) -> dict[str, Any]:
    """The new config: sizes, explicit head_dim, per-layer lists, layer-indexed keys."""
    new = copy_config(config)
    for name, space in arch.spaces.items():
        size = vocab_rows if name == "vocab" else targets[name]
        key = space_key(arch, name, config)
        if space.follows and config_get(config, key, None) is None:
            continue  # the config sizes it by the space it follows
        if size != sizes[name] or config_get(config, key, None) is None:
            config_set(new, key, size)
        for mirror in space.mirrors:  # keys that must hold the same size (only those present)
            if size != sizes[name] and config_get(config, mirror, None) is not None:
                config_set(new, mirror, size)
    for name, dim in arch.dims.items():  # a derived dim is written out (explicit head_dim); others stay as they are
        if dim.get("key") and isinstance(dim.get("default"), list) and config_get(config, dim["key"], None) is None:
            config_set(new, dim["key"], sizes[name])
    layers: list[int] = list(keep.get("layers", range(sizes["layers"])))  # type: ignore[arg-type]
    if layers != list(range(sizes["layers"])):
        _remap_layer_keys(arch, config, new, layers, sizes["layers"])
    return new  # every eps stays: hidden pruning scales the residual stream instead (hiddenrule.hidden_factor)


def _remap_layer_keys(arch: Architecture, config: dict[str, Any], new: dict[str, Any], layers: list[int], n: int) -> None:
    position = {old: i for i, old in enumerate(layers)}
    lists = {key: config_get(config, key, None) for key in arch.layer_lists}
    for rule in arch.layer_patterns:  # a per-layer list the config leaves implicit: write it out
        if not isinstance(lists.get(rule["list"]), list):
            step = int(config_get(config, rule["step"], None) or rule["default"]) if rule.get("step") else int(rule["default"])
            lists[rule["list"]] = [rule["every"] if (i + 1) % step == 0 else rule["other"] for i in range(n)]
    for key, value in lists.items():
        if isinstance(value, list) and len(value) == n:
            config_set(new, key, [value[i] for i in layers])
    for key in arch.layer_counts:
        value = config_get(config, key, None)
        if isinstance(value, int):
            config_set(new, key, sum(1 for i in layers if i < value))
    for key in arch.layer_ids:
        value = config_get(config, key, None)
        if isinstance(value, list):
            config_set(new, key, [position[i] for i in value if i in position])
    for key in arch.layer_dicts:  # {"<layer>": {...}}: kept layers' entries (sizes already rewritten), renumbered
        value = config_get(new, key, None)
        if isinstance(value, dict):
            config_set(new, key, {str(position[int(k)]): v for k, v in value.items() if int(k) in position})
    for rule in arch.layer_shared_tails:
        _shared_tail(config, new, rule, layers, n)
    for rule in arch.layer_steps:  # layer i is marked if listed in `ids` or (i + 1) % step != 0
        step = int(config_get(config, rule["step"], None) or 1)
        ids = set(config_get(config, rule["ids"], None) or [])
        marked = [position[i] for i in layers if i in ids or (i + 1) % step]
        config_set(new, rule["ids"], marked)
        config_set(new, rule["step"], 1)


def _shared_tail(config: dict[str, Any], new: dict[str, Any], rule: dict[str, Any], layers: list[int], n: int) -> None:
    """The last `count` layers reuse the KV of the last earlier layer of their `by` type (Gemma 4):
    dropping such a producer is refused; `count` becomes the number of kept tail layers."""
    first, producer = tail_producers(config, rule, n)
    count = n - first
    if not count:
        return
    dropped = sorted(set(producer.values()) - set(layers))
    if dropped:
        raise SpecError(f"layer {dropped[0]} produces the KV cache that the last {count} layers ({rule['count']}) reuse; "
                        f"{rule.get('why', 'keep it')}")
    config_set(new, rule["count"], sum(1 for i in layers if i >= first))


def tail_producers(config: dict[str, Any], rule: dict[str, Any], n: int) -> tuple[int, dict[int, int]]:
    """(first layer of the shared tail, {tail layer: the earlier layer whose KV it reuses}) of a
    `shared_tail` rule: the last layer of the same `by` type before the tail (none: n, {})."""
    count = int(config_get(config, rule["count"], None) or 0)
    kinds = config_get(config, rule["by"], None) or ["layer"] * n
    first = n - count
    last = {kinds[i]: i for i in range(max(first, 0))}  # the last of each kind before the tail
    return (first, {i: last[kinds[i]] for i in range(first, n) if kinds[i] in last}) if count else (n, {})


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """{dotted key: [old, new]} for every value that differs (nested dicts walked)."""
    changes: dict[str, list[Any]] = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes.update(config_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            changes[f"{prefix}{key}"] = [a, b]
    return changes
