"""Choose the indices to keep in every pruned space.

Methods: ``random`` (seeded, the original method), ``magnitude`` (largest L2 norm, from
scores computed while streaming) and ``activation`` (largest activation statistics from a
scores file, see ``calibrate/``), each optionally ``balance``d over N equal contiguous
partitions for tensor parallelism; explicit indices come from a keep file.  Hidden and
vocab are global; heads, kv heads, ffn, experts are chosen per layer.  GQA: query heads are
chosen inside kept kv groups, the same count in every group.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np

from .arch import RULES, Architecture, layer_type_is
from .errors import SpecError
from .keepfile import Keep, kept
from .configedit import tail_producers
from .sizes import config_get
from .spec import SCORED, PruneSpec

Scores = Callable[[str, str], np.ndarray]


def resolve_targets(arch: Architecture, sizes: dict[str, int], spec: PruneSpec,
                    config: dict[str, Any] | None = None) -> dict[str, int]:
    """Target size of every space, from the spec's config-keyed sizes (unlisted: unchanged).

    A space that `follows` another and has none of its keys in `config` takes that space's target."""
    by_key: dict[str, list[str]] = {}  # spaces sized by one key (e.g. routed and shared expert widths)
    for name, space in arch.spaces.items():
        for key in space.keys:
            by_key.setdefault(key, []).append(name)
    # a nested key (`text_config.hidden_size` of a VLM) is also given by its last part (`--hidden-size`)
    # (not a `*` key's field: `per_layer_config.*.num_key_value_heads` is no `num_key_value_heads`)
    by_key.update({k.rsplit(".", 1)[1]: n for k, n in list(by_key.items())
                   if "." in k and ".*." not in k and k.rsplit(".", 1)[1] not in by_key})
    targets = {name: sizes[name] for name in arch.spaces}
    for key, value in spec.sizes.items():
        if key in arch.dims or key == "head_dim":
            raise SpecError(f"{key} cannot be pruned (each head keeps its width); prune heads instead")
        if key not in by_key:
            options = ", ".join(sorted(by_key))
            raise SpecError(f"{key} is not a prunable size of {arch.family}; use one of: {options}")
        for space in by_key[key]:
            if value > sizes[space]:
                raise SpecError(f"target {key}={value} is larger than the source's {sizes[space]}; pruning only shrinks")
            targets[space] = value
    if "layers" in arch.spaces and spec.drop_layers is not None:
        n = sizes["layers"]
        bad = [i for i in spec.drop_layers if i >= n]
        if bad:
            raise SpecError(f"drop_layers names layer {bad[0]} but the model has layers 0..{n - 1} (0-based)")
        if len(spec.drop_layers) >= n:
            raise SpecError(f"drop_layers would remove all {n} layers; keep at least one")
        left = n - len(spec.drop_layers)
        key = arch.spaces["layers"].keys[0]
        if key in spec.sizes and spec.sizes[key] != left:
            raise SpecError(f"drop_layers leaves {left} layers but {key}={spec.sizes[key]}; give one or the other")
        targets["layers"] = left
    for name in following(arch, config):  # e.g. full-attention kv heads without a count of their own
        given = [k for k in arch.spaces[name].keys if k in spec.sizes]
        if given:
            lead = arch.spaces[arch.spaces[name].follows].keys[0]  # type: ignore[index]
            raise SpecError(f"config.json has no {given[0]}: these layers use {lead}; give --{lead.replace('_', '-')} instead")
        targets[name] = targets[arch.spaces[name].follows]  # type: ignore[index]
    for name, space in arch.spaces.items():  # MHA source, only heads given: stay MHA (kv follows)
        outer = space.within
        if outer and sizes[name] == sizes[outer] and targets[name] != sizes[name] and not _given(arch, outer, spec):
            targets[outer] = targets[name]
    if "vocab" in arch.spaces and spec.keep_vocab is not None:
        targets["vocab"] = len(spec.keep_vocab)
    check_targets(arch, sizes, targets, spec)
    return targets


def following(arch: Architecture, config: dict[str, Any] | None) -> list[str]:
    """Spaces that `follow` another because the config holds none of their keys."""
    if config is None:
        return []
    return [n for n, s in arch.spaces.items() if s.follows and all(config_get(config, k, None) is None for k in s.keys)]


def _given(arch: Architecture, space: str, spec: PruneSpec) -> bool:
    return any(key in spec.sizes for key in arch.spaces[space].keys) or bool(spec.keep and space in spec.keep)


def check_targets(arch: Architecture, sizes: dict[str, int], targets: dict[str, int], spec: PruneSpec) -> None:
    """Refuse targets that transformers cannot describe or that break GQA or balance."""
    for name, space in arch.spaces.items():
        if targets[name] <= 0:
            raise SpecError(f"{space.keys[0]} must stay positive")
        if space.within:
            outer, n_out, n_in = space.within, targets[space.within], targets[name]
            if n_in % n_out:
                raise SpecError(
                    f"{space.keys[0]}={n_in} is not a multiple of {arch.spaces[outer].keys[0]}={n_out}; "
                    "every kv group must keep the same number of query heads; "
                    f"set --{arch.spaces[outer].keys[0].replace('_', '-')} too"
                )
            if n_in // n_out > sizes[name] // sizes[outer]:
                raise SpecError(
                    f"{n_in} query heads over {n_out} kv groups needs {n_in // n_out} heads per group but the source "
                    f"has {sizes[name] // sizes[outer]}; also lower {space.keys[0]} or keep more kv heads"
                )
        if space.groups and targets[name] != sizes[name] and (targets[name] % sizes[space.groups] or sizes[name] % sizes[space.groups]):
            group_key = arch.dims[space.groups].get("key", space.groups)
            raise SpecError(f"{space.keys[0]}={targets[name]} must be a multiple of {group_key}={sizes[space.groups]}: "
                            "routing picks groups first, so every group keeps the same number")
        if spec.balance and targets[name] != sizes[name] and name not in ("layers", "vocab"):
            for n in (sizes[name], targets[name]):
                if n % spec.balance:
                    raise SpecError(f"--balance {spec.balance} needs {space.keys[0]} sizes divisible by it ({sizes[name]} -> {targets[name]})")
    sized_by: dict[str, str] = {}  # spaces sized by one config key (moe_ffn, shared_ffn) must agree
    for name, space in arch.spaces.items():
        other = sized_by.setdefault(space.keys[0], name)
        if targets[other] != targets[name]:
            raise SpecError(f"{other} and {name} are both sized by {space.keys[0]}; keep the same number in both "
                            f"({targets[other]} != {targets[name]})")
    for rule in arch.require:
        kind = next(k for k in RULES if k in rule)
        (a, va), (b, vb) = (_operand(arch, sizes, targets, x) for x in rule[kind])
        broken = {"divides": lambda: va == 0 or vb % va != 0, "at_most": lambda: va > vb, "equals": lambda: va != vb}[kind]()
        if broken:
            relation = {"divides": "must divide", "at_most": "must be at most", "equals": "must equal"}[kind]
            raise SpecError(f"{a}={va} {relation} {b}={vb}: {rule.get('why', 'required by the ' + arch.family + ' table')}")


def _operand(arch: Architecture, sizes: dict[str, int], targets: dict[str, int], operand: str) -> tuple[str, int]:
    """(description, value) of a require operand: a space or dim, or a product `a*b`."""
    value, names = 1, []
    for part in str(operand).split("*"):
        if part.isdigit():
            value, name = value * int(part), part
        else:
            value *= targets[part] if part in targets else sizes[part]
            name = arch.spaces[part].keys[0] if part in arch.spaces else arch.dims[part].get("key") or part
        names.append(name)
    return "*".join(names), value


def layers_to_drop(n: int, drop: int) -> list[int]:
    """Choose `drop` of `n` layers: spread out from the middle, never the first or last.

    Layers are taken from the middle outwards, every other layer first (so dropped layers
    are separated by kept ones while there is room), then the ones in between.
    """
    if drop <= 0:
        return []
    inner = list(range(1, n - 1))
    if drop > len(inner):
        raise SpecError(f"cannot drop {drop} of {n} layers while keeping the first and last; use --drop-layers")
    middle = (n - 1) / 2
    start = min(inner, key=lambda i: (abs(i - middle), i))
    order = sorted(inner, key=lambda i: ((i - start) % 2, abs(i - middle), i))
    return sorted(order[:drop])


def _rng(seed: int, space: str, *scope: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(space.encode()), *scope])


_SHARED: list[int] = []  # one int object per index value, shared by every kept-index list


def shared_ints(values: "np.ndarray | list[int]") -> list[int]:
    """`values` as a list of shared int objects.

    Each layer keeps its own lists of indices (thousands of ffn channels per layer); sharing
    the int objects makes a list cost 8 bytes per index instead of 40, so the plan of a deep
    model stays small.
    """
    values = np.asarray(values, dtype=np.int64)
    top = int(values.max()) + 1 if len(values) else 0
    if top > len(_SHARED):
        _SHARED.extend(range(len(_SHARED), top))
    return [_SHARED[i] for i in values.tolist()]


def choose(n: int, k: int, method: str, rng: np.random.Generator, score: np.ndarray | None, parts: int = 1) -> list[int]:
    """Keep `k` of `n` units, `k/parts` in each of `parts` contiguous partitions, sorted."""
    size, per = n // parts, k // parts
    chosen: list[np.ndarray] = []
    for p in range(parts):
        if score is not None:
            local = np.argsort(-score[p * size : (p + 1) * size], kind="stable")[:per]
        else:
            local = rng.choice(size, per, replace=False)
        chosen.append(np.asarray(local, dtype=np.int64) + p * size)
    return shared_ints(np.sort(np.concatenate(chosen)))  # parts >= 1: never empty


def scope_keys(arch: Architecture, space: str, keep: Keep, sizes: dict[str, int]) -> list[str]:
    """Keys under which a scoped space's kept indices are recorded ('' for global spaces)."""
    keys = [""]
    for placeholder in arch.spaces[space].per:
        owner = arch.placeholders[placeholder]
        nxt = []
        for key in keys:
            values = kept(keep, owner, key) if owner != "layers" else layer_scopes(arch, keep, sizes)
            values = values if values is not None else range(sizes[owner])
            nxt.extend(f"{key}.{v}" if key else str(v) for v in values)
        keys = nxt
    return keys


def layer_scopes(arch: Architecture, keep: Keep, sizes: dict[str, int]) -> list[int] | None:
    """Original layers that carry per-layer selections: the kept layers, then any extra layers
    the table names (`extra_layers`: MTP layers stored after num_hidden_layers, always kept)."""
    layers = keep.get("layers")
    extra = sizes.get(arch.extra_layers, 0) if arch.extra_layers else 0
    if not extra:
        return layers  # type: ignore[return-value]
    base = list(layers) if layers is not None else list(range(sizes["layers"]))  # type: ignore[arg-type]
    return base + list(range(sizes["layers"], sizes["layers"] + extra))


def select_layers(arch: Architecture, sizes: dict[str, int], targets: dict[str, int], spec: PruneSpec,
                  influence: np.ndarray | None = None) -> list[int]:
    """Kept original layer indices.

    With `influence` (block influence per layer, from activation scores) and a target depth, the
    layers that change the stream least are dropped (ShortGPT); otherwise middle-out.
    """
    n = sizes["layers"]
    if spec.keep and "layers" in spec.keep:
        layers = list(spec.keep["layers"])  # type: ignore[arg-type]
        if not layers or layers[-1] >= n:
            raise SpecError(f"keep file: layers must be non-empty indices below {n}")
        return layers
    if spec.drop_layers is not None:
        drop = set(spec.drop_layers)
    elif influence is not None and targets["layers"] < n:
        drop = set(_drop_by_scores(influence, n - targets["layers"]))
    else:
        drop = set(layers_to_drop(n, n - targets["layers"]))
    return [i for i in range(n) if i not in drop]


def _drop_by_scores(influence: np.ndarray, drop: int) -> list[int]:
    """Layers to drop from activation records.

    A 1-D array is block influence per layer: its `drop` lowest go (ShortGPT).  A 2-D array is
    the angular distance between the streams entering layers i and j: the contiguous block l..l+n-1
    whose input and output are closest goes (Gromov et al.).
    """
    if influence.ndim == 1:
        return np.argsort(influence, kind="stable")[:drop].tolist()
    starts = range(influence.shape[0] - drop)
    best = min(starts, key=lambda l: (influence[l, l + drop], l))
    return list(range(best, best + drop))


def targets_and_layers(arch: Architecture, sizes: dict[str, int], spec: PruneSpec,
                       influence: np.ndarray | None = None, config: dict[str, Any] | None = None) -> tuple[dict[str, int], list[int]]:
    """Target size of every space and the kept original layers (the first step of selection)."""
    targets = resolve_targets(arch, sizes, spec, config)
    layers = select_layers(arch, sizes, targets, spec, influence)
    targets["layers"] = len(layers)
    return targets, layers


def select_keep(
    arch: Architecture, sizes: dict[str, int], targets: dict[str, int], spec: PruneSpec,
    layers: list[int], scores: Scores | None = None, config: dict[str, Any] | None = None,
) -> Keep:
    """Kept indices of every pruned space (layers always recorded); a space with `only` is
    chosen on the layers of its type in `config` only (Gemma 4's sliding and full heads)."""
    keep: Keep = {"layers": layers}
    if spec.keep_vocab is not None:
        keep["vocab"] = list(spec.keep_vocab)
    explicit = spec.keep or {}
    order = sorted(arch.spaces, key=lambda s: (_depth(arch, s), s))
    for name in order:
        space = arch.spaces[name]
        if name in ("layers", "vocab") or name in keep:
            continue
        keys = scope_keys(arch, name, keep, sizes)
        if space.only and config is not None:
            keys = [k for k in keys if layer_type_is(config, space.only, int(k.split(".")[0]))]
        if name in explicit:
            keep[name] = _validated(arch, name, explicit[name], keys, sizes, targets)
            _share_producers(arch, name, keep, sizes, config, explicit=True)
            continue
        if targets[name] == sizes[name] and not (space.within and space.within in keep):
            continue
        chosen: dict[str, list[int]] = {}
        for key in keys:
            scope = [int(x) for x in key.split(".")] if key else []
            rng = _rng(spec.seed, name, *scope)
            score = scores(name, key) if spec.method in SCORED and scores else None
            if space.within:
                chosen[key] = _choose_within(arch, name, key, keep, sizes, targets, spec, score, rng)
            else:
                parts = sizes[space.groups] if space.groups else spec.balance or 1
                chosen[key] = choose(sizes[name], targets[name], spec.method, rng, score, parts)
        keep[name] = chosen[""] if keys == [""] else chosen
        _share_producers(arch, name, keep, sizes, config, explicit=False)
    return keep


def _share_producers(arch: Architecture, name: str, keep: Keep, sizes: dict[str, int],
                     config: dict[str, Any] | None, explicit: bool) -> None:
    """Layers that reuse an earlier layer's KV (`shared_tail` rules naming `name` in `spaces`)
    keep that producer's kv heads: their query heads are then chosen inside the producer's kept
    groups.  A keep file that gives a consumer other kv heads is refused."""
    chosen = keep.get(name)
    if config is None or not isinstance(chosen, dict):
        return
    for rule in arch.layer_shared_tails:
        if name not in rule.get("spaces", []):
            continue
        for layer, producer in tail_producers(config, rule, sizes["layers"])[1].items():
            if str(layer) not in chosen or str(producer) not in chosen:
                continue
            if not explicit:
                chosen[str(layer)] = chosen[str(producer)]
            elif list(chosen[str(layer)]) != list(chosen[str(producer)]):
                raise SpecError(f"keep file: layer {layer} reuses the keys and values of layer {producer} ({rule['count']}), "
                                f"so its {name} must be layer {producer}'s: {list(chosen[str(producer)])}")


def _depth(arch: Architecture, name: str) -> int:
    """How many spaces must be chosen before `name` (its `within` and the owners of its `per`)."""
    space = arch.spaces[name]
    owners = [arch.placeholders[p] for p in space.per if arch.placeholders.get(p) not in (None, "layers", name)]
    owners += [space.within] if space.within else []
    return 1 + max((_depth(arch, o) for o in owners), default=-1)


def _choose_within(arch: Architecture, name: str, key: str, keep: Keep, sizes: dict[str, int],
                   targets: dict[str, int], spec: PruneSpec, score: np.ndarray | None,
                   rng: np.random.Generator) -> list[int]:
    outer = arch.spaces[name].within
    assert outer is not None
    groups = kept(keep, outer, key)
    groups = list(range(sizes[outer])) if groups is None else groups
    per_source = sizes[name] // sizes[outer]
    per_target = targets[name] // targets[outer]
    chosen: list[int] = []
    for g in groups:
        local = score[g * per_source : (g + 1) * per_source] if score is not None else None
        picks = choose(per_source, per_target, spec.method, rng, local)
        chosen.extend(g * per_source + i for i in picks)
    return shared_ints(chosen)


def _validated(arch: Architecture, name: str, value: object, keys: list[str], sizes: dict[str, int], targets: dict[str, int]) -> list[int] | dict[str, list[int]]:
    key0 = arch.spaces[name].keys[0]
    if keys == [""]:
        if not isinstance(value, list):
            raise SpecError(f"keep file: {name} must be a list (it is global)")
        entries = {"": value}
    else:
        if not isinstance(value, dict) or set(value) != set(keys):
            raise SpecError(f"keep file: {name} must list kept indices for exactly these scopes: {', '.join(keys[:8])}{'...' if len(keys) > 8 else ''}")
        entries = value
    counts = {len(v) for v in entries.values()}
    if len(counts) != 1:
        raise SpecError(f"keep file: every scope of {name} must keep the same count ({key0} is one number)")
    for scope, idx in entries.items():
        if idx and idx[-1] >= sizes[name]:
            raise SpecError(f"keep file: {name}[{scope}] has index {idx[-1]} but the source has {sizes[name]}")
    groups = sizes[arch.spaces[name].groups] if arch.spaces[name].groups else 0  # type: ignore[index]
    for scope, idx in entries.items() if groups else ():
        per = sizes[name] // groups
        if len({sum(1 for i in idx if i // per == g) for g in range(groups)}) > 1:
            raise SpecError(f"keep file: {name}[{scope}] keeps different numbers of {name} per routing group; each of the {groups} groups must keep the same count")
    count = counts.pop()
    if count != targets[name] and targets[name] != sizes[name]:
        raise SpecError(f"keep file keeps {count} {name} but {key0}={targets[name]} was asked; give one or the other")
    targets[name] = count
    return value  # type: ignore[return-value]
