"""The in-memory reference's statistics of fused expert slices, read at the ATen level.

A slice of a fused [experts, a, b] parameter has no module to hook.  The reference reads it
without the torch function tap of :mod:`stats` (which it checks): a ``TorchDispatchMode`` sees
every ``aten.mm`` / ``aten.addmm`` after ``F.linear``, ``matmul`` and ``@`` have been decomposed,
finds the expert parameter the weight operand's memory belongs to and which of its axes the
product sums over, and matches the rows to tokens from the routing that a pre-hook on the
owning module hands it (the ``eager`` experts take an expert's tokens top-k slot by slot, each
slot in token order).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .readers import Reader
from .stats import Stats

_ATEN = torch.ops.aten


class ExpertReference(TorchDispatchMode):
    """Sums the statistics of every fused expert slice that a whole-model forward multiplies by."""

    def __init__(self, readers: dict[tuple[str, int | None], Reader], model: torch.nn.Module, stats: Stats,
                 space: str | None, num_experts: int) -> None:
        super().__init__()
        self.readers = readers
        self.stats = stats
        self.space = space or "experts"
        self.num_experts = num_experts
        wanted = {param for param, _ in readers}
        # the memory of each fused parameter: storage address -> (name, tensor)
        self.owners = {p.untyped_storage().data_ptr(): (n, p) for n, p in model.named_parameters() if n in wanted}
        self.routing: torch.Tensor | None = None
        self.seq = 0

    def start_batch(self, seq: int) -> None:
        """A micro-batch of windows of `seq` tokens enters the model."""
        self.seq = seq
        self.routing = None

    def routed(self, index: torch.Tensor, weights: torch.Tensor, layer: int) -> None:
        """The experts of `layer` are about to run with top-k `index` and `weights` per token."""
        self.routing = index.reshape(-1, index.shape[-1])
        weights = weights.reshape(self.routing.shape).to(torch.float64)
        mass = torch.stack([weights[self.routing == e].sum() for e in range(self.num_experts)])
        self._add((self.space, str(layer)), "route_weight", mass)

    def _add(self, key: tuple[str, str], name: str, value: torch.Tensor) -> None:
        acc = self.stats[key]
        value = value.detach().cpu().to(torch.float64)
        acc[name] = acc[name] + value if name in acc else value.clone()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if func is _ATEN.mm.default:
            self._product(args[0], args[1], out)
        elif func is _ATEN.addmm.default:
            self._product(args[1], args[2], out)
        return out

    def _product(self, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> None:
        owner = self.owners.get(w.untyped_storage().data_ptr())
        if owner is None or self.routing is None:
            return
        name, param = owner
        expert = (w.storage_offset() - param.storage_offset()) // param.stride(0)
        reader = self.readers.get((name, expert))
        if reader is None:
            return
        if w.stride(0) == param.stride(-1):  # the product sums over the parameter's last axis
            segments, writes = reader.segments, reader.writes_hidden
        else:
            segments, writes = reader.rows, reader.rows_write_hidden
        tokens = torch.cat([torch.nonzero(self.routing[:, slot] == expert).flatten()
                            for slot in range(self.routing.shape[1])])
        if tokens.numel() != x.shape[0]:
            raise AssertionError(f"expert {expert} of layer {reader.layer}: {x.shape[0]} rows, {tokens.numel()} routed")
        windows = tokens // self.seq
        layer = str(reader.layer)
        if writes:
            count = torch.zeros(self.num_experts, dtype=torch.float64)
            norm = torch.zeros(self.num_experts, dtype=torch.float64)
            count[expert] = x.shape[0]
            norm[expert] = y.to(torch.float64).norm(dim=-1).sum()
            self._add((self.space, layer), "tokens", count)
            self._add((self.space, layer), "out_norm", norm)
        for seg in segments:
            if seg.space == "hidden":  # hidden channels are read from readers that see every token
                continue
            part = x[:, seg.offset : seg.offset + seg.units * seg.width].to(torch.float64)
            part = part.reshape(x.shape[0], seg.units, seg.width)
            mag = part.pow(2).sum(-1).sqrt()
            key = (seg.space, seg.scope or layer)
            self._add(key, "abs", mag.sum(0))
            self._add(key, "sq", part.pow(2).sum((0, 2)))
            self._add(key, "tokens", torch.tensor([float(x.shape[0])]))
            means = [mag[windows == w].mean(0) for w in torch.unique(windows)]
            self._add(key, "win_sq", torch.stack(means).pow(2).sum(0))


def hook_routing(model: torch.nn.Module, mode: ExpertReference, hooks: list[Any]) -> None:
    """Pre-hooks on the modules owning fused expert parameters hand `mode` their routing."""
    owners = {(r.param.rsplit(".", 1)[0], r.layer) for r in mode.readers.values()}
    for owner, layer in owners:
        def pre(mod: torch.nn.Module, args: tuple, layer: int = layer) -> None:
            if len(args) >= 3:
                mode.routed(args[1], args[2], layer)

        hooks.append(model.get_submodule(owner).register_forward_pre_hook(pre))
