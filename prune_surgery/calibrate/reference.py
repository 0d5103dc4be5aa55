"""The in-memory reference: the whole `transformers` model loaded, statistics read by module hooks.

The model is the class `transformers` runs the checkpoint with (a VLM's image-text class, given
text only).  This is how Minitron-style tools calibrate (the model resident, hooks on its linear layers). It
serves as the oracle of the streamed engine in the tests and as the bench's reference run.  It
shares no forward code with :mod:`layerwise`: the model runs its own ``forward`` on each
micro-batch and plain forward pre-hooks on the reader modules sum the same statistics.  Readers
that are slices of fused 3-D expert parameters have no module to hook; for those the torch
function recorder of :mod:`stats` is entered around the whole forward.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import open_source
from ..sizes import source_sizes
from .modelclass import eager_experts, load_whole, param_namer
from .readers import layer_readers
from .stats import LayerRecorder, Stats, new_stats, same_input


def _plain_stats(x: torch.Tensor, units: int, width: int) -> dict[str, torch.Tensor]:
    x = x.to(torch.float64).reshape(*x.shape[:-1], units, width)  # [B, T, units, width]
    mag = x.abs()[..., 0] if width == 1 else x.pow(2).sum(-1).sqrt()
    win = mag.mean(dim=1)  # [B, units]: mean over each window's tokens
    return {"abs": mag.sum((0, 1)), "sq": x.pow(2).sum((0, 1, 3)), "win_sq": win.pow(2).sum(0),
            "tokens": torch.tensor([float(mag.shape[0] * mag.shape[1])], dtype=torch.float64)}


def inmemory_stats(src: str | Path, ids: torch.Tensor, micro: int, dtype: torch.dtype = torch.float32) -> tuple[Stats, Any]:
    """Statistics of windows `ids` [N, T] from the whole model held in memory, and the model."""
    source = open_source(src)
    model = load_whole(Path(str(source.local_root)), dtype)
    eager_experts(model)
    sizes = source_sizes(source.arch, source.checkpoint.config)
    readers = layer_readers(source.checkpoint, source.arch, sizes, param_namer(model))
    stats = new_stats()
    batch_shape = [(0, 0)]
    seen: dict[int, list[torch.Tensor]] = {}  # per layer: inputs already counted for hidden
    hooks, recorders = [], []
    expert_space = source.arch.placeholders.get("expert")
    params = {id(p): n for n, p in model.named_parameters()}
    for layer, group in readers.items():
        fused = {k: r for k, r in group.items() if r.expert is not None}
        if fused:
            recorders.append(LayerRecorder(fused, params, stats, expert_space, sizes.get(expert_space or "", 0)))
        for (param, expert), reader in group.items():
            if expert is not None:
                continue
            module = model.get_submodule(param.rsplit(".", 1)[0])

            if type(module).__name__ == "Conv1D":  # transformers' GPT-2 layer: weight stored [in, out]
                reader = replace(reader, segments=reader.rows)

            def pre(mod: torch.nn.Module, args: tuple, r: Any = reader) -> None:
                x = args[0]
                shape = batch_shape[0]
                if x.shape[:-1].numel() != shape[0] * shape[1]:
                    return
                counted = seen.setdefault(r.layer, [])
                for seg in r.segments:
                    if seg.space == "hidden" and same_input(x, counted):
                        continue
                    part = x.reshape(*shape, x.shape[-1])[..., seg.offset : seg.offset + seg.units * seg.width]
                    acc = stats[(seg.space, seg.scope or str(r.layer))]
                    for name, value in _plain_stats(part, seg.units, seg.width).items():
                        acc[name] = acc[name] + value if name in acc else value
                counted.append(x)

            hooks.append(module.register_forward_pre_hook(pre))
    _route_hooks(model, recorders, hooks)
    with torch.no_grad():
        for start in range(0, ids.shape[0], micro):
            batch = ids[start : start + micro]
            seen.clear()
            batch_shape[0] = tuple(batch.shape)
            for rec in recorders:
                rec.start_batch(*batch.shape)
            with _entered(recorders):
                model(input_ids=batch, use_cache=False)
    for hook in hooks:
        hook.remove()
    return stats, model


def _route_hooks(model: torch.nn.Module, recorders: list[LayerRecorder], hooks: list[Any]) -> None:
    for rec in recorders:
        owners = {r.param.rsplit(".", 1)[0] for r in rec.readers.values()}
        layer = next(iter(rec.readers.values())).layer
        for owner in owners:
            def pre(mod: torch.nn.Module, args: tuple, rec: LayerRecorder = rec, layer: int = layer) -> None:
                if len(args) >= 3:
                    rec.routed(args[1], args[2], layer)

            hooks.append(model.get_submodule(owner).register_forward_pre_hook(pre))


class _entered:
    """Enter several torch function modes (innermost last)."""

    def __init__(self, modes: list[LayerRecorder]) -> None:
        self.modes = modes

    def __enter__(self) -> None:
        for mode in self.modes:
            mode.__enter__()

    def __exit__(self, *exc: Any) -> None:
        for mode in reversed(self.modes):
            mode.__exit__(*exc)


def as_numpy(stats: Stats) -> dict[str, np.ndarray]:
    """Statistics as scores-file tables ({space}/{scope}/{stat})."""
    return {f"{space}/{scope}/{name}": value.numpy() for (space, scope), acc in stats.items() for name, value in acc.items()}
