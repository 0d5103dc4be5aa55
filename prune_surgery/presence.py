"""Checks that the checkpoint holds every tensor its architecture table requires."""

from __future__ import annotations

import itertools
import math
from typing import Any

from .arch import Architecture, TensorRole
from .errors import ArchitectureError
from .sizes import config_get


def check_required(arch: Architecture, sizes: dict[str, int], seen: set[Any], tied: bool, config: dict[str, Any]) -> None:
    """Every tensor a table requires is in the checkpoint, on exactly the layers and experts it should be."""
    for role in arch.roles.values():
        if role.only:
            check_layer_typed(arch, role, seen, config)
        if role.optional or role.copy or role.only or (role.tied_to and tied):
            continue
        ranges = [range(sizes[arch.placeholders[p]]) for p in role.placeholders]
        present = sum(1 for s in seen if s[0] == role.role)
        expected = math.prod(len(r) for r in ranges)
        if present == expected:
            continue
        if present == 0:
            names = role.template.format(**{p: 0 for p in role.placeholders})
            raise ArchitectureError(f"required tensor {names!r} is missing from the checkpoint ({arch.family} table role {role.role})")
        for combo in itertools.product(*ranges):
            binding = tuple(sorted(zip(role.placeholders, combo)))
            if (role.role, binding) not in seen:
                name = role.template.format(**dict(binding))
                raise ArchitectureError(f"required tensor {name!r} is missing from the checkpoint")


def check_layer_typed(arch: Architecture, role: TensorRole, seen: set[Any], config: dict[str, Any]) -> None:
    """A role marked `only: {list: layer_types, is: x}` must be on exactly the layers of type x."""
    key, kind = role.only  # type: ignore[misc]
    types = config_get(config, key, None)
    if not isinstance(types, list):
        raise ArchitectureError(f"config.json has no {key!r} list, which says which layers hold {role.template!r}")
    present = {dict(s[1]).get("layer") for s in seen if s[0] == role.role}
    for layer, layer_type in enumerate(types):
        name = role.template.format(layer=layer)
        if role.optional and layer_type == kind and layer not in present:
            continue  # may be absent on its layers (Gemma 4's KV-sharing layers hold no k_proj), never elsewhere
        if (layer_type == kind) != (layer in present):
            state = "is missing from" if layer_type == kind else f"is in (but {key}[{layer}] is {layer_type!r}, not {kind!r})"
            raise ArchitectureError(f"tensor {name!r} {state} the checkpoint; config.json and the weights disagree")
