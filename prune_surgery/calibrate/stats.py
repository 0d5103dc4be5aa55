"""Raw per-unit activation sums, recorded while a decoder layer runs its stock forward.

Every ``F.linear``, ``addmm`` and matrix product inside the layer is seen by a torch function
mode; when its weight is a reader of a prunable space (see :mod:`readers`), the input columns of
each unit are summed in float64:

- ``abs``: sum over tokens of |x| (of the unit's L2 norm per token when a unit spans several
  columns, e.g. a head of ``head_dim`` columns), ``sq``: sum of x^2, ``win_sq``: sum over windows
  of (mean over the window's tokens of |x|)^2 (Minitron's best aggregation is its square root),
  ``tokens``: how many tokens were seen.
- experts: tokens routed, routing weight and output norm of each expert.

Global spaces (hidden) are recorded per layer and summed later.  Hidden channels are read only
from readers that see every token of the micro-batch, once per distinct input tensor (q/k/v share
one input), so the same activation is never counted twice.  An expert slice's rows are matched
to windows through the routing even when every token went to that expert: its rows are then in
routing order, not token order, and its input still does not count for hidden.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.overrides import TorchFunctionMode

from .readers import Reader, Segment

Stats = dict[tuple[str, str], dict[str, torch.Tensor]]


def _add(acc: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    value = value.detach().to("cpu", torch.float64)
    if name in acc:
        acc[name] += value
    else:
        acc[name] = value.clone()


def same_input(x: torch.Tensor, seen: list[torch.Tensor]) -> bool:
    """Whether `x` holds the same values as a tensor already counted (the same memory, maybe reshaped).

    The counted tensors are held alive, so an address can only match while it holds them.
    """
    return any(x.data_ptr() == t.data_ptr() and x.numel() == t.numel() for t in seen)


_MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm)


class LinearTap(TorchFunctionMode):
    """Sees every product of a layer's forward with a known reader (or its expert slice) as weight.

    ``F.linear(x, W)`` contracts W's axis 1, ``addmm(b, x, W)``, ``x @ W`` and ``mm(x, W)`` its
    axis 0; whether that is the parameter's last axis (stored [out, in]) or the one before it
    (stored [in, out]: GPT-2's Conv1D, [experts, in, out] stacks) is read from the strides, so a
    transposed view is read right too.  Subclasses implement :meth:`on_linear`.  `params` maps
    id(parameter tensor) -> parameter name (set once the layer is materialized).
    """

    def __init__(self, readers: dict[tuple[str, int | None], Reader], params: dict[int, str]) -> None:
        super().__init__()
        self.readers = readers
        self.params = params
        self.batch_shape: tuple[int, int] = (0, 0)

    def start_batch(self, batch: int, seq: int) -> None:
        """A new micro-batch of `batch` windows of `seq` tokens enters the layer."""
        self.batch_shape = (batch, seq)

    def _reader(self, weight: torch.Tensor) -> Reader | None:
        name = self.params.get(id(weight))
        if name is not None:
            return self.readers.get((name, None))
        base = weight._base
        if base is None or id(base) not in self.params:
            return None
        whole = self.readers.get((self.params[id(base)], None))
        if whole is not None:
            return whole
        expert = (weight.storage_offset() - base.storage_offset()) // base.stride(0)
        return self.readers.get((self.params[id(base)], expert))

    def _view(self, weight: object, contracted: int) -> Reader | None:
        """The reader of a 2-D `weight` whose axis `contracted` is summed over, seen as it is applied."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            return None
        reader = self._reader(weight)
        if reader is None:
            return None
        base = weight._base if weight._base is not None else weight
        # (a contracted length of 1 shows no stride: the call's own convention decides)
        if weight.stride(contracted) == base.stride(-1) and (weight.shape[contracted] > 1 or contracted == 1):
            return reader  # the parameter's last axis is the input: stored [out, in]
        return reader.as_stored_in_out() if reader.rows else None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.nn.functional.linear:
            x, reader = args[0], self._view(args[1] if len(args) > 1 else kwargs.get("weight"), 1)
        elif func is torch.addmm and len(args) >= 3:
            x, reader = args[1], self._view(args[2], 0)
        elif func in _MATMULS and len(args) >= 2:
            x, reader = args[0], self._view(args[1], 0)
        else:
            return out
        if reader is not None:
            with torch.no_grad():
                self.on_linear(reader, x, out)
        return out

    def full(self, x: torch.Tensor) -> bool:
        """Whether `x` has a row for every token of the micro-batch (maybe flattened)."""
        return x.shape[:-1].numel() == self.batch_shape[0] * self.batch_shape[1]

    def on_linear(self, reader: Reader, x: torch.Tensor, y: torch.Tensor) -> None:
        """Called with a reader's input `x` and output `y`."""
        raise NotImplementedError


class LayerRecorder(LinearTap):
    """Records the statistics of one decoder layer's readers while its forward runs."""

    def __init__(self, readers: dict[tuple[str, int | None], Reader], params: dict[int, str], stats: Stats,
                 expert_space: str | None, num_experts: int) -> None:
        super().__init__(readers, params)
        self.stats = stats
        self.expert_space = expert_space
        self.num_experts = num_experts
        self.seen: list[torch.Tensor] = []  # inputs already counted for hidden (held: no address reuse)
        self.routing: torch.Tensor | None = None  # top_k_index of the experts call in flight

    def start_batch(self, batch: int, seq: int) -> None:
        """A new micro-batch of `batch` windows of `seq` tokens enters the layer."""
        super().start_batch(batch, seq)
        self.seen = []
        self.routing = None

    def routed(self, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, layer: int) -> None:
        """The experts of `layer` were called with this routing (a forward pre-hook calls this)."""
        self.routing = top_k_index.reshape(-1, top_k_index.shape[-1])
        weights = top_k_weights.reshape(self.routing.shape).to(torch.float64)
        mass = torch.zeros(self.num_experts + 1, dtype=torch.float64, device=weights.device)
        mass.index_add_(0, self.routing.reshape(-1).clamp(max=self.num_experts), weights.reshape(-1))
        _add(self.stats[(self.expert_space or "experts", str(layer))], "route_weight", mass[: self.num_experts])

    def _windows(self, x: torch.Tensor, reader: Reader) -> torch.Tensor | None:
        """Window index of every row of an expert's input (the tokens routed to it, even when that is
        every token), or None (not an expert slice, or one that computes every token in order)."""
        if self.routing is None or reader.expert is None:
            return None
        token = torch.where((self.routing == reader.expert).T)[1]  # the eager experts' order
        if token.numel() != x.shape[0] and self.full(x):
            return None
        if token.numel() != x.shape[0]:
            raise RuntimeError(f"expert {reader.expert} of layer {reader.layer} saw {x.shape[0]} tokens but "
                               f"{token.numel()} were routed to it; this experts implementation is not supported")
        return token // self.batch_shape[1]

    def on_linear(self, reader: Reader, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a reader's input to the sums of its units."""
        batch, seq = self.batch_shape
        windows = self._windows(x, reader)
        full = windows is None and self.full(x)
        original, x = x, x.to(torch.float64)
        if full:
            x = x.reshape(batch, seq, x.shape[-1])
        if not full and windows is None:
            return
        if reader.expert is not None and reader.writes_hidden and self.expert_space:
            acc = self.stats[(self.expert_space, str(reader.layer))]
            count = torch.zeros(self.num_experts, dtype=torch.float64)
            count[reader.expert] = x.shape[0]
            norm = torch.zeros(self.num_experts, dtype=torch.float64)
            norm[reader.expert] = y.to(torch.float64).norm(dim=-1).sum().cpu()
            _add(acc, "tokens", count)
            _add(acc, "out_norm", norm)
        for seg in reader.segments:
            if seg.space == "hidden":
                if not full or same_input(original, self.seen):
                    continue
            self._segment(seg, reader.layer, x, windows)
        if full:
            self.seen.append(original)

    def _segment(self, seg: Segment, layer: int, x: torch.Tensor, windows: torch.Tensor | None) -> None:
        cols = x[..., seg.offset : seg.offset + seg.units * seg.width]
        cols = cols.reshape(*cols.shape[:-1], seg.units, seg.width)
        mag = cols.abs()[..., 0] if seg.width == 1 else cols.norm(dim=-1)  # [..., units]
        acc = self.stats[(seg.space, seg.scope or str(layer))]
        flat = mag.reshape(-1, seg.units)
        _add(acc, "abs", flat.sum(0))
        _add(acc, "sq", (cols * cols).sum(-1).reshape(-1, seg.units).sum(0))
        _add(acc, "tokens", torch.tensor([flat.shape[0]], dtype=torch.float64))
        if windows is None:  # [B, T, units]: one window per row
            means = mag.mean(dim=1)
        else:
            n = self.batch_shape[0]
            sums = torch.zeros(n, seg.units, dtype=torch.float64, device=flat.device).index_add_(0, windows, flat)
            counts = torch.bincount(windows, minlength=n).to(torch.float64)[:, None]
            means = sums[counts[:, 0] > 0] / counts[counts[:, 0] > 0]
        _add(acc, "win_sq", (means * means).sum(0))


def new_stats() -> Stats:
    """An empty statistics table: (space, scope) -> {stat name: float64 tensor}."""
    return defaultdict(dict)
