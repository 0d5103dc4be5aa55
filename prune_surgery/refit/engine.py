"""Refit the readers of pruned units in a freshly written output, one layer at a time.

The output is first streamed as usual (every tensor sliced from the source); then each tensor
whose input axis lost units (``down_proj`` for ffn neurons, ``o_proj`` for heads, q/k/v/gate/up
and routers for hidden channels, per expert too) gets the ridge least-squares values of
:mod:`solve`, written over its bytes in place (same dtype and shape, so same offsets).  A weight
applied as ``x @ W`` (stored [in, out]: GPT-2's Conv1D, the slices of gpt-oss's [experts, in,
out] stacks) is solved on its axis -2; a stack is written whole, each kept expert's slice refit on
its routed tokens (an expert no token reached keeps plain slicing).

- ``oneshot``: one pass of the dense model; the pruned input is taken as the dense input's kept
  columns.
- ``sequential``: the pruned model (the output itself, read back) runs beside the dense one, so
  each layer's inputs come from the layers below already pruned and refit and errors do not pile
  up.  When the width of the stream is unchanged, the unpruned layer runs on the pruned model's
  stream and each reader is fit to what its unpruned weights compute from those inputs
  (SparseGPT's target).  When hidden channels are pruned the streams differ in width: the Grams
  then pair the dense model's input x with the pruned model's input y of the same tokens (measured
  worse than one-shot on SmolLM2: ``bench/results/refit.md``).  Expert slices (routed tokens
  differ between the two models) are refit one-shot.

Each layer's sums are accumulated with the layer resident; the copies of the weights being refit
are taken, the dense layer is freed, and only then is lambda chosen and each tensor solved
(:func:`_solve`); in sequential mode the pruned layer stays resident, since the solved values go
into it before it advances its own stream.

Only values change: shapes are the plan's, no tensor is added.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
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
from .gram import GramTap, InputCapture, Key
from .solve import DEFAULT_ALPHA, Refit, choose_alpha, solve_refit

MODES = ("oneshot", "sequential")
_TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def refit_targets(plan: Plan) -> dict[str, TensorPlan]:
    """Source tensor name -> its plan, for every 2-D weight or [experts, a, b] stack whose last two
    axes lost units: which of the two is the input is seen when the layer runs (``F.linear`` of
    [out, in] weights, ``x @ W`` of [in, out] ones: GPT-2's Conv1D, gpt-oss's stacks)."""
    return {t.source.name: t for t in plan.tensors if len(t.index) in (2, 3) and any(i is not None for i in t.index[-2:])}


def _source_weight(engine: LayerwiseModel, reader: Reader, name: str, stacked: bool) -> torch.Tensor:
    """Checkpoint tensor `name` as the layer holds it (one expert's slice of a stack), in the layer's
    dtype.  A tensor the model fuses with others (per-expert gate and up in one parameter) is read
    from the checkpoint itself."""
    param = engine.model.get_parameter(reader.param)
    value = param[reader.expert] if reader.expert is not None else param
    shape = engine.ckpt.tensors[name].shape
    if tuple(value.shape) != tuple(shape[1:] if stacked else shape):
        value = engine._read([name])[name].to(value.dtype)
    return value.detach()


def _index(kept: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(kept, dtype=np.int64))


@dataclass
class _Job:
    """One refit: a tensor (or one expert's slice of a stack) and the sums it is solved on."""

    tp: TensorPlan
    name: str
    tap: GramTap
    key: Key
    weight: torch.Tensor | None  # out x n as the reader applies it (kept output rows): a copy
    keep: torch.Tensor  # kept input columns
    in_out: bool  # stored [in, out]: the result is transposed back
    expert: int | None  # the expert of a stack's slice (None: a 2-D tensor)
    alpha: float | None = None


def _jobs(engine: LayerwiseModel, readers: dict[Any, Reader], taps: list[GramTap], targets: dict[str, TensorPlan],
          stacks: dict[str, tuple[TensorPlan, Refit]]) -> list[_Job]:
    """The refits of the resident layer whose sums `taps` hold, with copies of the weights they
    need, so the layer can be freed before anything is solved.  Every expert stack touched starts
    in `stacks` as the plain slicing of the source (float64)."""
    jobs: list[_Job] = []
    for reader in readers.values():
        key = (reader.name, reader.expert)
        tap = next((t for t in taps if t.grams(key)[0] is not None), None)
        if tap is None:
            continue
        for name in reader.names or (reader.name,):
            tp = targets.get(name)
            stacked = tp is not None and len(tp.index) == 3
            if tp is None or (stacked and tp.index[0] is not None and reader.expert not in tp.index[0]):
                continue  # not pruned, or an expert that was dropped
            in_out = key in tap.stored_in_out
            rows, cols = tp.index[-2:] if not in_out else tp.index[:-3:-1]  # (output, input) axes
            if cols is None:
                continue  # the input axis kept every unit
            weight = _source_weight(engine, reader, name, stacked)
            weight = weight.T if in_out else weight
            weight = weight[_index(rows).to(weight.device)] if rows is not None else weight.clone()
            if stacked and tp.out.name not in stacks:
                plain = engine.model.get_parameter(reader.param).detach().to(torch.float64)
                for axis, kept in enumerate(tp.index):
                    if kept is not None:
                        plain = plain.index_select(axis, _index(kept).to(plain.device))
                stacks[tp.out.name] = (tp, Refit(plain * tp.rescale if tp.rescale else plain, None))
            jobs.append(_Job(tp, name, tap, key, weight, _index(cols), in_out, reader.expert if stacked else None))
    return jobs


def _solve(jobs: list[_Job], stacks: dict[str, tuple[TensorPlan, Refit]], taps: list[GramTap]) -> dict[str, tuple[TensorPlan, Refit]]:
    """Choose lambda for every job on the held-out sums, free those, then solve the jobs one by one
    on all tokens (each job's weight copy freed once it is solved)."""
    for job in jobs:
        assert job.weight is not None
        total, val = job.tap.grams(job.key)
        assert total is not None
        job.alpha = choose_alpha(job.weight, job.keep, total, val, job.name) if val is not None else DEFAULT_ALPHA
    for tap in taps:
        tap.val.clear()
    solved = dict(stacks)
    for job in jobs:
        weight, job.weight = job.weight, None
        assert weight is not None
        if job.alpha is None:  # plain slicing was better on the held-out split
            if job.expert is not None:
                continue
            new = weight[:, job.keep.to(weight.device)].to(torch.float64)
        else:
            total, _ = job.tap.grams(job.key)
            assert total is not None
            new = solve_refit(weight, total, job.alpha, job.name)
        del weight
        new = new * job.tp.rescale if job.tp.rescale else new
        new = new.T if job.in_out else new
        if job.expert is None:
            solved[job.tp.out.name] = (job.tp, Refit(new, job.alpha))
            continue
        stack = solved[job.tp.out.name][1]
        experts = job.tp.index[0] if job.tp.index[0] is not None else range(stack.weight.shape[0])
        stack.weight[list(experts).index(job.expert)] = new
        stack.alpha = job.alpha
    return solved


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


def _oneshot_layer(dense: LayerwiseModel, index: int, readers: dict[Any, Reader], hidden: torch.Tensor, micro: int,
                   targets: dict[str, TensorPlan]) -> dict[str, tuple[TensorPlan, Refit]]:
    """Advance `hidden` through dense layer `index` (in place), accumulating its readers' sums; solve
    them once the layer is freed."""
    tap = GramTap(readers, {}, targets)
    stacks: dict[str, tuple[TensorPlan, Refit]] = {}
    with dense.resident(index):
        tap.params = dense.layer_params(index)
        for start in range(0, hidden.shape[0], micro):
            tap.begin(start, *hidden[start : start + micro].shape[:2])
            with tap:
                hidden[start : start + micro] = dense.forward(index, hidden[start : start + micro], start)
        jobs = _jobs(dense, readers, [tap], targets, stacks)
    return _solve(jobs, stacks, [tap])


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
                    h_pruned[start : start + micro] = pruned.forward(j, h_pruned[start : start + micro], start)
        elif mode == "oneshot" or index not in kept_layers:
            solved = _oneshot_layer(dense, index, readers, h_dense, micro, targets)
        else:
            assert pruned is not None and h_pruned is not None
            j = kept_layers.index(index)
            mine = pruned_readers.get(j, {})
            capture = InputCapture(readers, {})
            # expert slices see different routed tokens in the two models: refit them one-shot
            experts = GramTap({k: r for k, r in readers.items() if r.expert is not None}, {}, targets)
            tap = GramTap({k: replace(r, name=out_to_source[r.name], names=tuple(out_to_source[n] for n in r.names))
                           for k, r in mine.items() if r.expert is None}, {}, targets, capture)
            stacks: dict[str, tuple[TensorPlan, Refit]] = {}
            with pruned.resident(j):
                with dense.resident(index):  # freed before the solves
                    capture.params = experts.params = dense.layer_params(index)
                    tap.params = pruned.layer_params(j)
                    for start in range(0, ids.shape[0], micro):
                        d_in, p_in = h_dense[start : start + micro], h_pruned[start : start + micro]
                        capture.start_batch(*d_in.shape[:2])
                        experts.begin(start, *d_in.shape[:2])
                        with capture, experts:
                            h_dense[start : start + micro] = dense.forward(index, d_in, start)
                        tap.begin(start, *p_in.shape[:2])
                        with tap:
                            pruned.forward(j, p_in, start)
                    capture.inputs.clear()
                    jobs = _jobs(dense, readers, [tap, experts], targets, stacks)
                solved = _solve(jobs, stacks, [tap, experts])
                _install(pruned, mine, out_to_source, solved)
                for start in range(0, ids.shape[0], micro):
                    h_pruned[start : start + micro] = pruned.forward(j, h_pruned[start : start + micro], start)
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
    """Put refit values into the resident pruned layer, so the next layer sees their effect.

    A tensor the model fuses with others (per-expert gate and up) keeps its sliced values there."""
    for reader in readers.values():
        done = solved.get(reader.name)
        if done is None or done[1].alpha is None:
            continue
        param = pruned.model.get_parameter(reader.param)
        value = done[1].weight
        target = param[reader.expert] if reader.expert is not None and value.dim() < param.dim() else param
        if tuple(target.shape) == tuple(value.shape):
            with torch.no_grad():
                target.copy_(value.to(target.dtype))
