"""Where each space's activation is read, derived from the architecture table.

A space's activation is the input of every tensor whose *input* axis lives in that space: the
last axis of a weight applied by ``F.linear`` (the first of one applied by ``addmm``, as GPT-2's
Conv1D stores [in, out]; the call tells which): ``down_proj`` [hidden, ffn] reads ffn neurons, ``o_proj`` [hidden, heads] reads query
heads, ``q/k/v/gate/up`` [.., hidden] read hidden channels.  A checkpoint tensor becomes a model
parameter through `transformers`' own renaming (per-expert tensors are fused into 3-D
parameters there), so a reader is keyed by (parameter name, expert index or None).  Nothing here
names a model family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..arch import Architecture
from ..checkpoint import Checkpoint
from ..sizes import segment_width


@dataclass(frozen=True)
class Segment:
    """A run of input columns that carries `units` units of `space` (each `width` columns)."""

    space: str
    scope: str
    offset: int
    units: int
    width: int


@dataclass(frozen=True)
class Reader:
    """One model parameter (or one expert's slice of it) whose input columns carry spaces."""

    param: str
    expert: int | None
    segments: tuple[Segment, ...]
    writes_hidden: bool  # its output axis is the residual stream (o_proj, down_proj, experts' down)
    layer: int
    name: str = ""  # the checkpoint tensor (for fused gate/up slices: the last one mapped there)
    rows: tuple[Segment, ...] = ()  # the spaces of axis 0: the input when the model stores [in, out] (GPT-2 Conv1D)
    transposed: bool = False  # this view of the reader reads its axis 0 (see LinearTap)


def _segments(arch: Architecture, axis: tuple, binding: dict[str, int], sizes: dict[str, int]) -> tuple[Segment, ...]:
    out, offset = [], 0
    if any(s.space not in arch.spaces and s.space not in sizes and not s.space.isdigit() for s in axis):
        return ()  # a `free` dim (sized by the tensor itself) carries no prunable space here
    for seg in axis:
        if seg.space in arch.spaces:
            units, width = sizes[seg.space], segment_width(arch, seg, sizes)
            scope = ".".join(str(binding[p]) for p in arch.spaces[seg.space].per)
            out.append(Segment(seg.space, scope, offset, units, width))
        else:
            units, width = 1, int(seg.space) if seg.space.isdigit() else sizes[seg.space]
        offset += units * width
    return tuple(out)


def layer_readers(
    ckpt: Checkpoint, arch: Architecture, sizes: dict[str, int], to_param: Callable[[str], str],
) -> dict[int, dict[tuple[str, int | None], Reader]]:
    """Per decoder layer: every reader of a prunable space, keyed by (parameter, expert).

    `to_param` maps a checkpoint tensor name to the model parameter it is loaded into.
    Only 2-D weights count (biases and norms carry no input axis).
    """
    expert_owner = arch.placeholders.get("expert")
    found: dict[int, dict[tuple[str, int | None], Reader]] = {}
    for name in ckpt.tensors:
        claim = arch.match(name, ckpt.config)
        if claim is None:
            continue
        role, binding = claim
        if "layer" not in binding or len(role.axes) != 2:
            continue
        segments = _segments(arch, role.axes[-1], binding, sizes)
        rows = _segments(arch, role.axes[0], binding, sizes)
        writes_hidden = any(s.space == "hidden" for s in role.axes[0])
        if not segments and not rows:
            continue
        param = to_param(name)
        # a per-expert checkpoint tensor fused into one 3-D parameter: the reader is that expert's slice
        expert = binding.get("expert") if param != name and expert_owner is not None else None
        key = (param, expert)
        layer = binding["layer"]
        found.setdefault(layer, {})[key] = Reader(param, expert, segments, writes_hidden, layer, name, rows)
    return found
