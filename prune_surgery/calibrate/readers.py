"""Where each space's activation is read, derived from the architecture table.

A space's activation is the input of every tensor whose *input* axis lives in that space: the
last axis of a weight stored [out, in] (applied by ``F.linear``), the one before it of a weight
stored [in, out] (GPT-2's Conv1D through ``addmm``, gpt-oss's [experts, in, out] stacks through
``x @ W[e]``); the memory layout of the weight the call contracts tells which (see
:class:`stats.LinearTap`): ``down_proj`` [hidden, ffn] reads ffn neurons, ``o_proj`` [hidden,
heads] reads query heads, ``q/k/v/gate/up`` [.., hidden] read hidden channels.  A checkpoint
tensor becomes a model parameter through `transformers`' own renaming (per-expert tensors are
fused into 3-D parameters there), so a reader is keyed by (parameter name, expert index or
None); a checkpoint tensor that is already a 3-D stack led by the expert space gives one reader
per expert.  Nothing here names a model family.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    rows: tuple[Segment, ...] = ()  # the spaces of axis -2: the input when the model stores [in, out] (GPT-2 Conv1D)
    transposed: bool = False  # this view of the reader reads its axis -2 (see LinearTap)
    rows_write_hidden: bool = False  # its last axis is the residual stream (the output when stored [in, out])
    names: tuple[str, ...] = ()  # every checkpoint tensor loaded into it (per-expert gate and up fused in one)

    def as_stored_in_out(self) -> "Reader":
        """This reader as a weight stored [in, out]: its input is axis -2, its output the last axis."""
        return replace(self, segments=self.rows, writes_hidden=self.rows_write_hidden, transposed=True)


def expert_space(arch: Architecture) -> str | None:
    """The space experts are counted in: the `{expert}` placeholder's, else the leading space of
    the table's 3-D layer stacks (experts fused in one tensor, no `{expert}` in any name)."""
    if "expert" in arch.placeholders:
        return arch.placeholders["expert"]
    leads = {role.axes[0][0].space for role in arch.roles.values()
             if len(role.axes) == 3 and len(role.axes[0]) == 1 and role.axes[0][0].space in arch.spaces}
    return leads.pop() if len(leads) == 1 else None


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
    Only 2-D weights and 3-D stacks led by the expert space count (biases and norms carry no
    input axis); the last two axes of either are read as a matrix.
    """
    expert_owner = arch.placeholders.get("expert")
    stacked = expert_space(arch)
    found: dict[int, dict[tuple[str, int | None], Reader]] = {}
    for name, info in ckpt.tensors.items():
        claim = arch.match(name, ckpt.config)
        if claim is None:
            continue
        role, binding = claim
        stack = len(role.axes) == 3 and len(info.shape) == 3 and [s.space for s in role.axes[0]] == [stacked]
        if "layer" not in binding or not (len(role.axes) == 2 or stack):
            continue
        param = to_param(name)
        # a per-expert checkpoint tensor fused into one 3-D parameter: the reader is that expert's slice
        experts = range(sizes[stacked]) if stack else [binding.get("expert") if param != name and expert_owner is not None else None]
        for expert in experts:
            where = {**binding, "expert": expert} if stack else binding
            segments = _segments(arch, role.axes[-1], where, sizes)
            rows = _segments(arch, role.axes[-2], where, sizes)
            if not segments and not rows:
                continue
            group = found.setdefault(binding["layer"], {})
            before = group[(param, expert)].names if (param, expert) in group else ()
            group[(param, expert)] = Reader(
                param, expert, segments, any(s.space == "hidden" for s in role.axes[-2]), binding["layer"], name, rows,
                rows_write_hidden=any(s.space == "hidden" for s in role.axes[-1]), names=before + (name,))
    return found
