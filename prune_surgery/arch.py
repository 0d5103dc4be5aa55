"""Architecture tables: which axis of which tensor lives in which prunable space.

Tables are YAML data under ``prune_surgery/tables/``; a family may ``extends`` another and
override or add entries (``null`` removes one).  This module turns a table into an
:class:`Architecture` and claims every tensor name of a checkpoint.  It knows spaces and
axes, never family names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from .errors import ArchitectureError
from .tablelayout import apply_layout, renamed_templates


@dataclass(frozen=True)
class Segment:
    """One part of an axis: `space` units of `per_unit` elements (space may be a fixed dim).

    `unit` overrides the space's own rows per unit for this axis (MLA: a head is
    qk_head_dim rows of q_b_proj but v_head_dim columns of o_proj)."""

    space: str
    multiplier: int | str = 1  # units per index: an integer, or a fixed dim's name (`lin_v_heads*lin_dv`)
    unit: str | None = None


@dataclass(frozen=True)
class TensorRole:
    """One entry of the table: a name template and the spaces of its axes."""

    role: str
    template: str
    axes: tuple[tuple[Segment, ...], ...]
    norm: bool = False
    optional: bool = False
    tied_to: str | None = None
    pattern: re.Pattern[str] = field(compare=False, default=re.compile(""))
    norm_final: bool = False  # `norm: final` or `feeds_head: true`: feeds the lm_head (see hiddenrule.hidden_factor)
    residual: str = ""  # "write": adds into the residual stream; "read": reads it raw (see hiddenrule.hidden_factor)
    embed_scale: bool = False  # the model multiplies it by sqrt(hidden_size) at run time (Gemma)
    copy: bool = False  # `copy: true`: every tensor under the name prefix, copied as is (a vision tower)
    only: tuple[str, str] | None = None  # `only: {list: layer_types, is: x}`: exactly on the layers of type x
    extra: bool = False  # a copy under `extra_layers.to`: `{layer}` counts the extra (MTP) layers from 0

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Template variables in order of appearance, e.g. ('layer',)."""
        return tuple(re.findall(r"\{(\w+)\}", self.template))


@dataclass(frozen=True)
class Space:
    """A prunable dimension and where the config keeps its size."""

    name: str
    keys: tuple[str, ...]
    per: tuple[str, ...] = ()
    unit: str | int = 1
    within: str | None = None
    default: str | None = None
    mirrors: tuple[str, ...] = ()  # other config keys holding the same size, written with it (a VLM's projector width)
    groups: str | None = None  # a dim: units are chosen in that many equal contiguous groups, the same count in each
    follows: str | None = None  # a space: with none of its keys in the config, it has that space's size and target
    only: tuple[str, str] | None = None  # `only: {list, is}`: chosen per layer on the layers of that type only


#: norm kinds a table may name, and the offset their stored weight carries
NORM_OFFSETS = {"rms": 0.0, "rms_one_plus": 1.0, "layernorm": 0.0}
#: `require` rule kinds (see tables/README.md)
RULES = ("divides", "at_most", "equals")


@dataclass(frozen=True)
class Architecture:
    """A resolved architecture table."""

    family: str
    model_types: tuple[str, ...]
    norm: str
    tie_key: str | None
    tie_default: bool
    placeholders: dict[str, str]
    spaces: dict[str, Space]
    dims: dict[str, dict[str, Any]]
    roles: dict[str, TensorRole]
    drop: tuple[re.Pattern[str], ...]
    layer_lists: tuple[str, ...]
    layer_counts: tuple[str, ...]
    layer_ids: tuple[str, ...]
    require: tuple[dict[str, Any], ...]
    layer_steps: tuple[dict[str, Any], ...] = ()
    layer_patterns: tuple[dict[str, Any], ...] = ()
    layer_dicts: tuple[str, ...] = ()  # `layer_config.dicts`: {"<layer>": ...} config dicts, renumbered
    layer_shared_tails: tuple[dict[str, Any], ...] = ()  # `layer_config.shared_tail` (KV sharing)
    approximate: str = ""
    alias_roles: tuple[TensorRole, ...] = ()  # the same roles under another stored layout (`aliases`)
    caveats: tuple[dict[str, Any], ...] = ()
    extra_layers: str | None = None  # a dim: layers numbered after num_hidden_layers (MTP), kept and renumbered
    extra_stored: bool = False  # `extra_layers: {count, from, to}`: stored in a list of their own, never renumbered
    when: tuple[tuple[str, Any], ...] = ()  # `when: {key: value}`: claims its model_types only for such configs

    @property
    def norm_offset(self) -> float:
        """Stored norm weight w acts as (w + offset): 1 for `rms_one_plus` (Gemma), else 0."""
        return NORM_OFFSETS.get(self.norm, 0.0)

    def match(self, name: str, config: dict[str, Any] | None = None) -> tuple[TensorRole, dict[str, int]] | None:
        """The role claiming `name` and its placeholder values, or None for a dropped buffer.

        With `config`, a role marked `only: {list, is}` claims a layer's tensor only when the
        layer's entry in that list is `is`, so two roles may share a name template, one per layer
        type (Gemma 4's sliding and full attention); when none fits, the first match is returned
        (and the presence check reports the disagreement).
        Raises ArchitectureError naming the tensor when no entry claims it.
        """
        first = None
        for role in (*self.roles.values(), *self.alias_roles):
            found = role.pattern.fullmatch(name)
            if found:
                binding = {k: int(v) for k, v in found.groupdict().items()}
                if role.extra:  # not a decoder layer of the main stack: see `claim`
                    binding["extra_layer"] = binding.pop("layer")
                    return role, binding
                if config is None or role.only is None or layer_type_is(config, role.only, binding.get("layer")):
                    return role, binding
                first = first or (role, binding)
        if first is not None:
            return first
        if any(p.fullmatch(name) for p in self.drop):
            return None
        raise ArchitectureError(
            f"tensor {name!r} is not described by the {self.family} table; add it to "
            f"prune_surgery/tables/ (or report it) so that no weight is silently lost"
        )


    def claim(self, name: str, sizes: dict[str, int], config: dict[str, Any] | None = None) -> tuple[TensorRole, dict[str, int]] | None:
        """`match`, with an extra layer stored in a list of its own (`mtp.layers.{i}`) bound to the
        layer scope num_hidden_layers + i, where its selections are recorded (as for MTP layers
        stored after the decoder layers); refused when the config counts fewer extra layers."""
        found = self.match(name, config)
        if found is None or not found[0].extra:
            return found
        role, binding = found
        index = binding.pop("extra_layer")
        count = sizes.get(self.extra_layers or "", 0)
        if index >= count:
            key = self.dims.get(self.extra_layers or "", {}).get("key", self.extra_layers)
            raise ArchitectureError(f"tensor {name!r} is extra layer {index} but config.json gives {key} = {count}; "
                                    "the config does not match the weights")
        return role, {**binding, "layer": sizes["layers"] + index}


def _extra_copies(roles: dict[str, TensorRole], extra: dict[str, Any], family: str) -> dict[str, TensorRole]:
    """Copies of the decoder-layer roles under another prefix (`extra_layers: {count, from, to}`):
    optional, on no `layer_types` entry, marked `extra` (see Architecture.claim)."""
    if set(extra) != {"count", "from", "to"} or not all("{layer}" in str(extra[k]) for k in ("from", "to")):
        raise ArchitectureError(f"table {family}: extra_layers needs a dim, or exactly `count`, `from` and `to` "
                                f"prefixes holding {{layer}}: {extra}")
    old, new = str(extra["from"]), str(extra["to"])
    copies = {}
    for name, role in roles.items():
        if role.template.startswith(old):
            template = new + role.template[len(old):]
            copies[f"{name}@extra"] = replace(role, role=f"{name}@extra", template=template, pattern=_compile(template),
                                              optional=True, only=None, extra=True)
    return copies


def layer_type_is(config: dict[str, Any], only: tuple[str, str], layer: int | None) -> bool:
    """Whether entry `layer` of the config list `only[0]` is `only[1]` (a role's or space's `only`)."""
    from .sizes import config_get  # sizes reads Architecture: imported here, not at the top

    types = config_get(config, only[0], None)
    return isinstance(types, list) and layer is not None and layer < len(types) and types[layer] == only[1]


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in child.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _compile(template: str, copy: bool = False) -> re.Pattern[str]:
    if copy:  # a name prefix: everything below it
        return re.compile(re.escape(template) + ".+")
    parts = re.split(r"(\{\w+\})", template)
    regex = "".join(f"(?P<{p[1:-1]}>\\d+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(regex)


def _axis(spec: str, known: set[str], where: str) -> tuple[Segment, ...]:
    segments = []
    for part in str(spec).split("+"):
        part, _, unit = part.strip().partition("@")
        space, _, mult = part.partition("*")
        for name in (space, unit) if unit else (space,):
            if name not in known and not name.isdigit():
                raise ArchitectureError(f"table {where}: axis {spec!r} names unknown space or dim {name!r}")
        if mult and not mult.isdigit() and mult not in known:
            raise ArchitectureError(f"table {where}: axis {spec!r} multiplies by unknown dim {mult!r}")
        segments.append(Segment(space, int(mult) if mult.isdigit() else mult or 1, unit or None))
    return tuple(segments)


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster start-up


@lru_cache(maxsize=1)
def raw_tables() -> dict[str, dict[str, Any]]:
    """Every family's table as written in the YAML files (before inheritance)."""
    tables: dict[str, dict[str, Any]] = {}
    for item in sorted(resources.files("prune_surgery.tables").iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml"):
            for family, table in (yaml.load(item.read_text(), Loader=_LOADER) or {}).items():
                if family in tables:
                    raise ArchitectureError(f"family {family!r} is defined twice in the tables")
                tables[family] = table
    return tables


def _resolve(family: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    tables = raw_tables()
    if family in seen or family not in tables:
        raise ArchitectureError(f"table {family!r} is missing or extends itself")
    table = tables[family]
    parent = table.get("extends")
    if not parent:
        return dict(table)
    inherited = _resolve(parent, seen + (family,))
    if table.get("rename"):  # the parent's names under another prefix (a VLM's language model)
        inherited = renamed_templates(inherited, table["rename"], family)
    return _merge(inherited, table)


def _list(value: Any) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list) else (value,) if value else ()


@lru_cache(maxsize=None)
def load_architecture(family: str) -> Architecture:
    """Resolve a family's table (with inheritance) into an Architecture."""
    t = apply_layout(_resolve(family), family)
    spaces = {
        n: Space(n, _list(s["key"]), tuple(s.get("per", ())), s.get("unit", 1), s.get("within"), s.get("default"),
                 _list(s.get("mirrors")), s.get("groups"), s.get("follows"),
                 (s["only"]["list"], s["only"]["is"]) if s.get("only") else None)
        for n, s in t.get("spaces", {}).items()
    }
    dims = dict(t.get("dims", {}))
    known = set(spaces) | set(dims)
    roles = {}
    for role, entry in t.get("tensors", {}).items():
        axes = tuple(_axis(a, known, f"{family}.{role}") for a in entry.get("axes", []))
        norm, residual = entry.get("norm"), entry.get("residual", "")
        if norm not in (None, False, True, "final", "post"):
            raise ArchitectureError(f"table {family}.{role}: norm must be true, 'final' or 'post', got {norm!r}")
        if residual not in ("", "write", "read"):
            raise ArchitectureError(f"table {family}.{role}: residual must be 'write' or 'read', got {residual!r}")
        if "hidden_scale" in entry or "hidden_scale_if" in entry:
            raise ArchitectureError(
                f"table {family}.{role}: `hidden_scale` is gone: hidden pruning keeps every eps and scales the residual "
                "stream instead; mark what adds into it `residual: write`, a run-time sqrt(hidden_size) `embed_scale: true`, "
                "and drop the flag from q/k projections (see tables/README.md)"
            )
        roles[role] = TensorRole(
            role, entry["name"], axes, norm in (True, "final"), bool(entry.get("optional")),
            entry.get("tied_to"), _compile(entry["name"], bool(entry.get("copy"))), norm == "final" or bool(entry.get("feeds_head")),
            residual, bool(entry.get("embed_scale")), bool(entry.get("copy")),
            (entry["only"]["list"], entry["only"]["is"]) if entry.get("only") else None,
        )
    if t.get("norm", "rms") not in NORM_OFFSETS:
        raise ArchitectureError(f"table {family}: norm must be one of {', '.join(NORM_OFFSETS)}")
    for rule in t.get("require", []):
        kinds = [k for k in RULES if k in rule]
        if len(kinds) != 1 or len(rule[kinds[0]]) != 2:
            raise ArchitectureError(f"table {family}: a require rule needs exactly one of {', '.join(RULES)} with two operands: {rule}")
        for operand in rule[kinds[0]]:
            for part in str(operand).split("*"):
                if part not in known and not part.isdigit():
                    raise ArchitectureError(f"table {family}: require rule {rule} names unknown space or dim {part!r}")
    for caveat in t.get("caveats", []):
        if caveat.get("when") not in spaces or "note" not in caveat:
            raise ArchitectureError(f"table {family}: a caveat needs `when` (a space) and `note` (`config`, `is` optional): {caveat}")
    extra = t.get("extra_layers")
    if isinstance(extra, dict):
        roles.update(_extra_copies(roles, extra, family))
        extra = extra.get("count")
    for name in [s.groups for s in spaces.values() if s.groups] + list(_list(extra)):
        if name not in dims:
            raise ArchitectureError(f"table {family}: {name!r} (groups / extra_layers) must be a dim")
    layer_config = t.get("layer_config", {})
    tie = t.get("tie", {})
    alias_roles, alias_drop = _aliased(roles, list(t.get("drop", [])), list(t.get("aliases", [])), family)
    return Architecture(
        family=family,
        model_types=_list(t.get("model_types", [family])),
        norm=t.get("norm", "rms"),
        tie_key=tie.get("key"),
        tie_default=bool(tie.get("default", False)),
        placeholders=dict(t.get("placeholders", {})),
        spaces=spaces,
        dims=dims,
        roles=roles,
        drop=tuple(_compile(d) for d in [*t.get("drop", []), *alias_drop]),
        layer_lists=_list(layer_config.get("lists")),
        layer_counts=_list(layer_config.get("counts")),
        layer_ids=_list(layer_config.get("ids")),
        require=tuple(t.get("require", [])),
        layer_steps=tuple(layer_config.get("steps", [])),
        layer_patterns=tuple(layer_config.get("patterns", [])),
        layer_dicts=_list(layer_config.get("dicts")),
        layer_shared_tails=tuple(layer_config.get("shared_tail", [])),
        approximate=str(t.get("approximate", "")),
        alias_roles=alias_roles,
        caveats=tuple(t.get("caveats", [])),
        extra_layers=extra,
        extra_stored=isinstance(t.get("extra_layers"), dict),
        when=tuple(dict(t.get("when") or {}).items()),
    )


def _aliased(roles: dict[str, TensorRole], drop: list[str], aliases: list[dict[str, str]], family: str) -> tuple[tuple[TensorRole, ...], list[str]]:
    """Roles and drop templates rewritten for each alternative stored layout (`aliases`).

    An alias `{canonical: "transformer.", stored: ""}` says that a checkpoint may store every
    name that the table writes with the prefix `canonical` with the prefix `stored` instead
    (GPT-2 on the Hub has no `transformer.`; older VLM checkpoints say `language_model.model.`).
    An aliased tensor keeps its stored name in the output.
    """
    extra: list[TensorRole] = []
    more_drop: list[str] = []
    for alias in aliases:
        if set(alias) != {"canonical", "stored"}:
            raise ArchitectureError(f"table {family}: an alias needs exactly `canonical` and `stored` prefixes: {alias}")
        old, new = str(alias["canonical"]), str(alias["stored"])
        for role in roles.values():
            if role.template.startswith(old):
                template = new + role.template[len(old):]
                extra.append(replace(role, template=template, pattern=_compile(template, role.copy)))
        more_drop += [new + d[len(old):] for d in drop if d.startswith(old)]
    return tuple(extra), more_drop


def families() -> list[str]:
    """Every family with a table."""
    return sorted(raw_tables())


def architecture_for(config: dict[str, Any]) -> Architecture:
    """The architecture whose `model_types` include the config's `model_type`."""
    model_type = config.get("model_type")
    from .sizes import config_get

    candidates = [a for a in map(load_architecture, families()) if model_type in a.model_types]
    for arch in sorted(candidates, key=lambda a: not a.when):  # a table whose `when` holds, else the plain one
        if all(config_get(config, key, None) == value for key, value in arch.when):
            return arch
    supported = ", ".join(t for f in families() for t in load_architecture(f).model_types)
    raise ArchitectureError(
        f"model_type {model_type!r} is not supported (supported: {supported}); "
        "to add one, write a table of data (see README 'Adding an architecture' and "
        "prune_surgery/tables/README.md; a family extends another, e.g. `extends: llama`, and lists its "
        "`model_types`, prunable `spaces` with their config keys, and every tensor name template with "
        "the space of each axis)"
    )
