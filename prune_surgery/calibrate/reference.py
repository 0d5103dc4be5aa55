"""The in-memory reference: the whole `transformers` model loaded, statistics read by module hooks.

The model is the class `transformers` runs the checkpoint with (a VLM's image-text class, given
text only).  This is how Minitron-style tools calibrate (the model resident, hooks on its linear layers). It
serves as the oracle of the streamed engine in the tests and as the bench's reference run.  It
shares no forward code with :mod:`layerwise`: the model runs its own ``forward`` on each
micro-batch and plain forward pre-hooks on the reader modules sum the same statistics.  Readers
that are slices of fused 3-D expert parameters have no module to hook; those are read at the
ATen level by :mod:`reference_experts`, not by the torch function tap it checks.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import open_source
from ..sizes import source_sizes
from .modelclass import eager_experts, load_whole, param_namer
from .readers import expert_space, layer_readers
from .reference_experts import ExpertReference, hook_routing
from .stats import Stats, new_stats, same_input


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
    hooks: list[Any] = []
    space = expert_space(source.arch)
    fused = {k: r for group in readers.values() for k, r in group.items() if r.expert is not None}
    experts = ExpertReference(fused, model, stats, space, sizes.get(space or "", 0))
    hook_routing(model, experts, hooks)
    for layer, group in readers.items():
        for (param, expert), reader in group.items():
            owner, leaf = param.rsplit(".", 1)
            if expert is not None or leaf != "weight":  # a stacked bias [experts, n] is no module's weight
                continue
            module = model.get_submodule(owner)

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
    with torch.no_grad():
        for start in range(0, ids.shape[0], micro):
            batch = ids[start : start + micro]
            seen.clear()
            batch_shape[0] = tuple(batch.shape)
            experts.start_batch(batch.shape[1])
            with experts if fused else contextlib.nullcontext():  # no ATen-level tap on dense models (bench speed)
                model(input_ids=batch, use_cache=False)
    for hook in hooks:
        hook.remove()
    return stats, model


def as_numpy(stats: Stats) -> dict[str, np.ndarray]:
    """Statistics as scores-file tables ({space}/{scope}/{stat})."""
    return {f"{space}/{scope}/{name}": value.numpy() for (space, scope), acc in stats.items() for name, value in acc.items()}
