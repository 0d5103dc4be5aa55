"""``calibrate``: activation statistics of every prunable space, one decoder layer resident.

The layers run in order; after each one the residual stream, the sums so far and any state the
layers hand to later ones (KV sharing, :mod:`carried`) are saved beside the output
(``SCORES.partial/``), so a killed run resumes from its last finished layer
with ``resume=True``.  The partial state is only reused when it was made from the same model,
data and settings.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import __version__
from ..sizes import source_sizes
from .carried import carried_state, restore_carried
from .data import calibration_windows
from .layerwise import LayerwiseModel
from .readers import expert_space, layer_readers
from .scorefile import Scores, config_hash, save_scores
from .session import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, Progress, micro_batch, open_for_forward
from .stats import LayerRecorder, Stats, new_stats


def _partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _save_state(folder: Path, done: int, hidden: torch.Tensor, last: list[torch.Tensor], stats: Stats,
                influence: np.ndarray, key: str, carried: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tensors = {"hidden": hidden.contiguous(), "last": torch.stack(last).contiguous(), **carried}
    for (space, scope), acc in stats.items():
        for name, value in acc.items():
            tensors[f"{space}/{scope}/{name}"] = value.contiguous()
    tensors["influence"] = torch.from_numpy(influence)
    tmp = folder / "state.tmp"
    save_file(tensors, str(tmp), metadata={"done": str(done), "key": key})
    tmp.replace(folder / "state.safetensors")


def _load_state(folder: Path, key: str) -> tuple[int, torch.Tensor, list[torch.Tensor], Stats, np.ndarray,
                                                 dict[str, torch.Tensor]] | None:
    from safetensors import safe_open

    path = folder / "state.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        if meta.get("key") != key:
            return None
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    stats = new_stats()
    for name, value in tensors.items():
        if name.count("/") == 2:
            space, scope, stat = name.split("/")
            stats[(space, scope)][stat] = value
    carried = {k: v for k, v in tensors.items() if k.startswith("carried/")}
    return int(meta["done"]), tensors["hidden"], list(tensors["last"]), stats, tensors["influence"].numpy(), carried


def _angular(last: list[torch.Tensor]) -> np.ndarray:
    """Mean over windows of arccos(cos(h_i, h_j)) / pi between last-token streams."""
    states = torch.nn.functional.normalize(torch.stack(last).to(torch.float64), dim=-1)  # [L+1, N, H]
    cos = torch.einsum("inh,jnh->ijn", states, states).clamp(-1, 1)
    return (torch.arccos(cos) / torch.pi).mean(-1).numpy()


def _hook_routing(engine: LayerwiseModel, index: int, recorder: LayerRecorder) -> list[Any]:
    """Pre-hooks on modules owning fused expert parameters: they are called with the routing."""
    prefix = engine._layer_prefix(index)
    fused = {r.param.rsplit(".", 1)[0] for r in recorder.readers.values() if r.expert is not None}
    hooks = []
    for name in fused:
        module = engine.model.get_submodule(name)

        def pre(mod: torch.nn.Module, args: tuple) -> None:
            if len(args) >= 3 and all(isinstance(a, torch.Tensor) for a in args[1:3]):
                recorder.routed(args[1], args[2], index)

        hooks.append(module.register_forward_pre_hook(pre))
    assert all(n.startswith(prefix) for n in fused)
    return hooks


def calibrate(src: str | Path, data: Sequence[str | Path], out: str | Path, *, text_field: str = "text",
              samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN, device: str = "cpu",
              dtype: str | None = None, micro: int | None = None, resume: bool = False,
              revision: str | None = None, progress: Progress | None = None) -> Scores:
    """Calibrate `src` on `data` and write the scores file `out`; returns the scores."""
    out = Path(out)
    opened = open_for_forward(src, device=device, dtype=dtype, revision=revision)
    source = opened.source
    windows = calibration_windows(opened.tokenizer, data, samples, seq_len, text_field)
    ids = torch.from_numpy(windows.ids)
    n, length = ids.shape
    engine = LayerwiseModel(source, opened.dtype, device)
    sizes = source_sizes(source.arch, source.checkpoint.config)
    readers = layer_readers(source.checkpoint, source.arch, sizes, engine.to_param)
    micro = micro_batch(length, micro)
    layers = engine.num_layers
    provenance: dict[str, Any] = {
        "source": source.record, "config_hash": config_hash(source.checkpoint.config), "data_hash": windows.data_hash,
        "data": list(windows.files), "windows": int(n), "seq_len": int(length), "tokens": int(n * length),
        "bos": windows.bos, "dtype": str(opened.dtype).removeprefix("torch."), "device": device,
        "tool": "prune-surgery", "version": __version__, "layers": layers,
    }
    key = json.dumps({k: provenance[k] for k in ("config_hash", "data_hash", "windows", "seq_len", "dtype")}, sort_keys=True)
    partial = _partial_dir(out)
    state = _load_state(partial, key) if resume else None
    if state is None:
        stats, influence, start_layer = new_stats(), np.zeros((2, layers)), 0
        hidden = engine.embed(ids, micro)
        last = [hidden[:, -1, :].float().cpu().clone()]
    else:
        start_layer, hidden, last, stats, influence, carried = state
        hidden = hidden.to(device)
        engine.record(ids, micro)  # the layers' arguments for each micro-batch
        restore_carried(engine.captured, carried, device)  # what the layers before start_layer handed on
    partial.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    space = expert_space(source.arch)
    num_experts = sizes.get(space, 0) if space else 0
    for index in range(start_layer, layers):
        recorder = LayerRecorder(readers.get(index, {}), {}, stats, space, num_experts)
        hooks = _hook_routing(engine, index, recorder)

        def around(start: int, h_in: torch.Tensor, rec: LayerRecorder = recorder, i: int = index) -> Any:
            if not rec.params:
                rec.params = engine.layer_params(i)
            rec.start_batch(h_in.shape[0], h_in.shape[1])
            return rec

        def observe(start: int, h_in: torch.Tensor, h_out: torch.Tensor, i: int = index) -> None:
            cos = torch.nn.functional.cosine_similarity(h_in.double(), h_out.double(), dim=-1)
            influence[0, i] += float((1 - cos).sum())
            influence[1, i] += cos.numel()
            if progress:
                progress(f"calibrate layer {i + 1}/{layers}", i * n + start + h_in.shape[0], layers * n, (i - start_layer) * n * length
                         + (start + h_in.shape[0]) * length)

        try:
            engine.run_layer(index, hidden, micro, observe=observe, around=around)
        finally:
            for hook in hooks:
                hook.remove()
        last.append(hidden[:, -1, :].float().cpu().clone())
        _save_state(partial, index + 1, hidden.cpu(), last, stats, influence, key, carried_state(engine.captured))
    provenance["seconds"] = round(time.monotonic() - clock, 3)
    tables = {f"{space}/{scope}/{name}": value.numpy() for (space, scope), acc in stats.items() for name, value in acc.items()}
    tables["layers/all/influence"] = influence[0]
    tables["layers/all/tokens"] = influence[1]
    tables["layers/all/angular"] = _angular(last)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_scores(out, tables, provenance)
    shutil.rmtree(partial, ignore_errors=True)
    return Scores(tables, provenance, out)
