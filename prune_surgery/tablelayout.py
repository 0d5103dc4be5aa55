"""Table features that move a whole family under another name or config layout.

A vision-language checkpoint holds a language model that some text table already describes,
under other tensor names (`language_model.model.layers...`) and with its sizes in a nested
config (`text_config.hidden_size`).  Two table entries say so, applied to the resolved table
(own and inherited entries alike) before it becomes an Architecture:

- `config_prefix: text_config.`: every config key the table names (space and dim keys, `mirrors`,
  `layer_config`, tensors' and spaces' `only`, `when`) is read and written under that prefix (dotted keys, see sizes.py), except
  keys that are dotted already (`vision_config.hidden_size`; `per_layer_config.*.head_dim` is prefixed) and `tie`, which transformers
  reads from the top-level config of a composite model;
- `rename: [{from: "model.", to: "language_model.model."}]`: every tensor name template and
  `drop` template inherited from `extends` (not the table's own) starting with `from` starts
  with `to` instead (the first rule that applies); so does the `from` of `extra_layers`.
"""

from __future__ import annotations

from typing import Any

from .errors import ArchitectureError


def _prefixed(value: Any, prefix: str) -> Any:
    """Keys under `prefix`; a key that is already dotted (`vision_config.hidden_size`) is left alone."""
    if isinstance(value, list):
        return [_prefixed(v, prefix) for v in value]
    return prefix + str(value) if value and ("." not in str(value) or ".*." in str(value)) else value  # `a.*.b`: the table's own dict


def apply_layout(table: dict[str, Any], family: str) -> dict[str, Any]:
    """The table with `config_prefix` applied (a new dict; the input is not changed)."""
    t = dict(table)
    prefix = t.get("config_prefix")
    if prefix:
        t["spaces"] = {n: {**s, "key": _prefixed(s["key"], prefix), **({"mirrors": _prefixed(s["mirrors"], prefix)} if s.get("mirrors") else {}),
                           **({"only": {**s["only"], "list": _prefixed(s["only"]["list"], prefix)}} if s.get("only") else {})}
                       for n, s in t.get("spaces", {}).items()}
        t["dims"] = {n: {**d, "key": _prefixed(d["key"], prefix)} if d.get("key") else d for n, d in t.get("dims", {}).items()}
        config = dict(t.get("layer_config", {}))
        for kind in ("lists", "counts", "ids", "dicts"):
            if kind in config:
                config[kind] = _prefixed(config[kind], prefix)
        for kind, fields in (("steps", ("step", "ids")), ("patterns", ("list", "step")), ("shared_tail", ("count", "by"))):
            config[kind] = [{**r, **{f: _prefixed(r[f], prefix) for f in fields if r.get(f)}} for r in config.get(kind, [])]
        t["when"] = {_prefixed(k, prefix): v for k, v in (t.get("when") or {}).items()}
        t["layer_config"] = config  # `tie` stays top-level: transformers ties a composite model by its own config
        t["tensors"] = {r: {**e, "only": {**e["only"], "list": _prefixed(e["only"]["list"], prefix)}} if e.get("only") else e
                        for r, e in t.get("tensors", {}).items()}
    return t


def renamed_templates(inherited: dict[str, Any], renames: list[dict[str, str]], family: str) -> dict[str, Any]:
    """The inherited (resolved parent) table with its name templates moved by `rename` rules."""
    t = dict(inherited)
    for rule in renames:
        if set(rule) != {"from", "to"}:
            raise ArchitectureError(f"table {family}: a rename needs exactly `from` and `to` prefixes: {rule}")

    def renamed(name: str) -> str:
        for rule in renames:
            if name.startswith(rule["from"]):
                return rule["to"] + name[len(rule["from"]):]
        return name

    t["tensors"] = {r: {**e, "name": renamed(e["name"])} for r, e in t.get("tensors", {}).items()}
    t["drop"] = [renamed(d) for d in t.get("drop", [])]
    if isinstance(t.get("extra_layers"), dict):  # the decoder-layer prefix its copies are taken from
        t["extra_layers"] = {**t["extra_layers"], "from": renamed(str(t["extra_layers"].get("from", "")))}
    return t
