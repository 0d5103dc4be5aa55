"""Refit the readers of pruned units in a freshly written output, one layer at a time.

The output is first streamed as usual (every tensor sliced from the source); then each tensor
whose input axis lost units (``down_proj`` for ffn neurons, ``o_proj`` for heads, q/k/v/gate/up
and routers for hidden channels, per expert too) gets the ridge least-squares values of
:mod:`solve`, written over its bytes in place (same dtype and shape, so same offsets).

- ``oneshot``: one pass of the dense model; the pruned input is taken as the dense input's kept
  columns.
- ``sequential``: the pruned model (the output itself, read back) runs beside the dense one, so
  each layer's inputs come from the layers below already pruned and refit and errors do not pile
  up.  When the width of the stream is unchanged, the unpruned layer runs on the pruned model's
  stream and each reader is fit to what its unpruned weights compute from those inputs
  (SparseGPT's target).  When hidden channels are pruned the streams differ in width: the Grams
  then pair the dense model's input x with the pruned model's input y of the same tokens.  Expert
  slices (routed tokens differ between the two models) are refit one-shot.

Only values change: shapes are the plan's, no tensor is added.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..api import Source, open_source
from ..calibrate.layerwise import LayerwiseModel
from ..calibrate.readers import Reader, layer_readers
from ..checkpoint import open_checkpoint
from ..plan import Plan, TensorPlan
from ..sizes import source_sizes
from ..storage import LocalStorage
from .gram import GramTap, InputCapture
from .solve import DEFAULT_ALPHA, Refit, choose_alpha, solve_refit

MODES = ("oneshot", "sequential")
_TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def refit_targets(plan: Plan) -> dict[str, TensorPlan]:
    """Source tensor name -> its plan, for every 2-D tensor whose input axis is pruned."""
    return {t.source.name: t for t in plan.tensors if len(t.index) == 2 and t.index[-1] is not None}


def _target_weights(engine: LayerwiseModel, readers: dict[Any, Reader],
                    targets: dict[str, TensorPlan]) -> dict[str, torch.Tensor]:
    """Copies (compute dtype, kept rows) of the resident layer's weights that are refit, by tensor name."""
    out: dict[str, torch.Tensor] = {}
    for reader in readers.values():
        tp = targets.get(reader.name)
        if tp is None:
            continue
        param = engine.model.get_parameter(reader.param).detach()
        weight = param[reader.expert] if reader.expert is not None else param
        if tp.index[0] is not None:
            weight = weight[torch.from_numpy(np.asarray(tp.index[0], dtype=np.int64)).to(weight.device)]
        out[reader.name] = weight.clone()
    return out


def _keeps(readers: dict[Any, Reader], targets: dict[str, TensorPlan]) -> dict[str, torch.Tensor]:
    """Kept input columns of every reader that is refit."""
    return {r.name: torch.from_numpy(np.asarray(targets[r.name].index[-1], dtype=np.int64))
            for r in readers.values() if r.name in targets}


class _Writer:
    """Overwrites tensors of the output's shards in place."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.refs = open_checkpoint(LocalStorage(out)).tensors

    def write(self, name: str, value: torch.Tensor) -> None:
        ref = self.refs[name]
        if ref.dtype not in _TORCH:
            raise ValueError(f"cannot write refit values as {ref.dtype}")
        data = value.to(_TORCH[ref.dtype]).contiguous().cpu().view(torch.uint8).numpy().tobytes()
        assert len(data) == ref.nbytes and tuple(value.shape) == ref.shape, name
        fd = os.open(self.out / ref.file, os.O_WRONLY)
        try:
            os.pwrite(fd, data, ref.offset)
        finally:
            os.close(fd)


def _solve_layer(weights: dict[str, torch.Tensor], tap: GramTap, targets: dict[str, TensorPlan],
                 experts: GramTap | None = None) -> dict[str, tuple[TensorPlan, Refit]]:
    """Choose lambda for every refit reader of one layer, free the held-out sums, then solve one by one."""
    chosen: dict[str, tuple[GramTap, float | None]] = {}
    for name, weight in weights.items():
        for source in (tap, experts):
            total, val = source.grams(name) if source is not None else (None, None)
            if total is not None:
                keep = torch.from_numpy(np.asarray(targets[name].index[-1], dtype=np.int64))
                chosen[name] = (source, choose_alpha(weight, keep, total, val, name) if val is not None else DEFAULT_ALPHA)
                break
    for source in (tap, experts):
        if source is not None:
            source.val.clear()
    solved: dict[str, tuple[TensorPlan, Refit]] = {}
    for name, (source, alpha) in chosen.items():
        tp, weight = targets[name], weights.pop(name)
        if alpha is None:
            keep = torch.from_numpy(np.asarray(tp.index[-1], dtype=np.int64)).to(weight.device)
            new = weight[:, keep].to(torch.float64)
        else:
            total, _ = source.grams(name)
            assert total is not None
            new = solve_refit(weight, total, alpha, name)
        del weight
        solved[tp.out.name] = (tp, Refit(new * tp.rescale if tp.rescale else new, alpha))
    return solved


def _oneshot_layer(dense: LayerwiseModel, index: int, readers: dict[Any, Reader], hidden: torch.Tensor, micro: int,
                   targets: dict[str, TensorPlan]) -> dict[str, tuple[TensorPlan, Refit]]:
    """Advance `hidden` through dense layer `index` (in place), accumulating its readers' Grams; solve them
    once the layer is freed."""
    readers = {k: r for k, r in readers.items() if r.name in targets}
    tap = GramTap(readers, {}, keeps=_keeps(readers, targets))
    with dense.resident(index):
        tap.params = dense.layer_params(index)
        for start in range(0, hidden.shape[0], micro):
            tap.begin(start, *hidden[start : start + micro].shape[:2])
            with tap:
                hidden[start : start + micro] = dense.forward(index, hidden[start : start + micro])
        weights = _target_weights(dense, readers, targets)
    return _solve_layer(weights, tap, targets) if weights else {}


def refit_output(plan: Plan, source: Source, out: Path, ids: torch.Tensor, *, mode: str = "oneshot",
                 dtype: torch.dtype = torch.float32, device: str = "cpu", micro: int = 8,
                 progress: Callable[[str, int, int, int], None] | None = None) -> dict[str, Any]:
    """Refit every reader of pruned units in the output folder `out`; returns the record."""
    targets = refit_targets(plan)
    record: dict[str, Any] = {"mode": mode, "tensors": 0, "kept_slicing": 0, "alphas": {}, "windows": int(ids.shape[0]),
                              "seq_len": int(ids.shape[1]), "lambda": {}}
    if not targets:
        return record
    dense = LayerwiseModel(source, dtype, device)
    sizes = source_sizes(source.arch, source.checkpoint.config)
    dense_readers = layer_readers(source.checkpoint, source.arch, sizes, dense.to_param)
    writer = _Writer(out)
    kept_layers = list(plan.keep["layers"])  # type: ignore[arg-type]
    h_dense = dense.embed(ids, micro)
    pruned = h_pruned = None
    if mode == "sequential":
        pruned_source = open_source(out)
        pruned = LayerwiseModel(pruned_source, dtype, device)
        pruned_readers = layer_readers(pruned_source.checkpoint, pruned_source.arch,
                                       source_sizes(pruned_source.arch, pruned_source.checkpoint.config), pruned.to_param)
        out_to_source = {t.out.name: t.source.name for t in plan.tensors}
        h_pruned = pruned.embed(ids, micro)
    for index in range(dense.num_layers):
        if progress:
            progress(f"refit layer {index + 1}/{dense.num_layers}", index, dense.num_layers, index * ids.numel())
        readers = dense_readers.get(index, {}) if index in kept_layers else {}
        if mode == "sequential" and index in kept_layers and "hidden" not in plan.keep:
            # same width: the dense layer runs on the pruned model's own stream (SparseGPT's target), so
            # each reader is fit to what the unpruned weights compute from the inputs the pruned model sees
            assert pruned is not None and h_pruned is not None
            j = kept_layers.index(index)
            h_dense.copy_(h_pruned)
            solved = _oneshot_layer(dense, index, readers, h_dense, micro, targets)
            with pruned.resident(j):
                _install(pruned, pruned_readers.get(j, {}), out_to_source, solved)
                for start in range(0, ids.shape[0], micro):
                    h_pruned[start : start + micro] = pruned.forward(j, h_pruned[start : start + micro])
        elif mode == "oneshot" or index not in kept_layers:
            solved = _oneshot_layer(dense, index, readers, h_dense, micro, targets)
        else:
            assert pruned is not None and h_pruned is not None
            j = kept_layers.index(index)
            mine = pruned_readers.get(j, {})
            readers = {k: r for k, r in readers.items() if r.name in targets}
            capture = InputCapture(readers, {})
            # expert slices see different routed tokens in the two models: refit them one-shot
            expert_readers = {k: r for k, r in readers.items() if r.expert is not None}
            experts = GramTap(expert_readers, {}, keeps=_keeps(expert_readers, targets))
            tap = GramTap({k: Reader(r.param, r.expert, r.segments, r.writes_hidden, r.layer, out_to_source[r.name])
                           for k, r in mine.items() if r.expert is None and out_to_source[r.name] in targets}, {}, capture)
            with dense.resident(index), pruned.resident(j):
                capture.params = experts.params = dense.layer_params(index)
                tap.params = pruned.layer_params(j)
                for start in range(0, ids.shape[0], micro):
                    d_in, p_in = h_dense[start : start + micro], h_pruned[start : start + micro]
                    capture.start_batch(*d_in.shape[:2])
                    experts.begin(start, *d_in.shape[:2])
                    with capture, experts:
                        h_dense[start : start + micro] = dense.forward(index, d_in)
                    tap.begin(start, *p_in.shape[:2])
                    with tap:
                        pruned.forward(j, p_in)
                solved = _solve_layer(_target_weights(dense, readers, targets), tap, targets, experts)
                _install(pruned, mine, out_to_source, solved)
                for start in range(0, ids.shape[0], micro):
                    h_pruned[start : start + micro] = pruned.forward(j, h_pruned[start : start + micro])
        for name, (tp, result) in solved.items():
            record["tensors"] += 1
            if result.alpha is None:
                record["kept_slicing"] += 1
                continue
            writer.write(name, result.weight)
            record["lambda"][name] = result.alpha  # relative to the mean diagonal of the kept Gram
            key = f"{result.alpha:g}"
            record["alphas"][key] = record["alphas"].get(key, 0) + 1
    return record


def _install(pruned: LayerwiseModel, readers: dict[Any, Reader], out_to_source: dict[str, str],
             solved: dict[str, tuple[TensorPlan, Refit]]) -> None:
    """Put refit values into the resident pruned layer, so the next layer sees their effect."""
    for reader in readers.values():
        done = solved.get(reader.name)
        if done is None or done[1].alpha is None:
            continue
        param = pruned.model.get_parameter(reader.param)
        target = param[reader.expert] if reader.expert is not None else param
        with torch.no_grad():
            target.copy_(done[1].weight.to(target.dtype))
