"""Plan every output tensor, the new config and the shard layout before reading a weight.

The plan is complete and checked when this module returns: names after layer renumbering,
kept element indices per axis, shapes, dtypes, byte sizes, shards, parameter counts, peak
memory and warnings.  Shapes transformers cannot describe are refused here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .arch import Architecture, TensorRole
from .backend import default_workers
from .checkpoint import Checkpoint, TensorRef
from .configedit import config_changes, rewrite_config
from .errors import ArchitectureError, SpecError
from .keepfile import Keep, kept
from .hiddenrule import hidden_factor
from .presence import check_required
from .quant import Dequant, logical_shape, plan_quantized, quant_format
from .score import compute_scores
from .select import check_targets, select_keep, targets_and_layers
from .sink import OutTensor, ShardLayout, layout_shards
from .sizes import config_get, is_tied, segment_width, source_sizes
from .spec import DEFAULT_DEPTH, DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, PruneSpec, dump_json

BLOCK_BYTES = 16 << 20
"""Input bytes per row block.  A block and its gathered output stay in a 32 MiB L3 cache: on the
bench machine 16 MiB blocks ran the width+depth job 1.5x faster than 32 MiB ones, with a third less memory."""


MAGNITUDE_WARNING = (
    "magnitude ranks units by weight norms, which lose to random selection on real pretrained models "
    "(SmolLM2-135M, ffn 1536 -> 1024: see README 'Choosing what to keep'); prefer --method activation"
)

SEQUENTIAL_HIDDEN_WARNING = (
    "sequential refit with hidden channels pruned measured worse than no refit on SmolLM2-135M (hidden 576 -> 432: "
    "held-out perplexity 165 against 147 without refit and 52 one-shot; bench/results/refit.md); prefer --refit oneshot"
)


@dataclass
class TensorPlan:
    """How one output tensor is made from one input tensor."""

    source: TensorRef
    out: OutTensor
    role: str
    index: tuple[np.ndarray | None, ...]  # kept element indices per axis (None: all)
    rescale: float | None = None  # RMSNorm weight scale (hidden pruning)
    pad_rows: int = 0  # zero rows appended (vocab padding)
    rescale_offset: float = 0.0  # the weight acts as (w + offset): written as (w + offset) * rescale - offset
    dequant: Dequant | None = None  # a block-quantized weight written dequantized (quant.py)

    @property
    def identity(self) -> bool:
        """True when the output bytes equal the input bytes."""
        return all(i is None for i in self.index) and self.rescale is None and not self.pad_rows and self.dequant is None


@dataclass
class Plan:
    """Everything a run will do, known before any weight byte is read."""

    arch: Architecture
    spec: PruneSpec
    source: dict[str, Any]
    sizes: dict[str, int]
    targets: dict[str, int]
    keep: Keep
    config: dict[str, Any]
    new_config: dict[str, Any]
    tensors: list[TensorPlan]
    shards: list[ShardLayout]
    dropped: list[str]
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    peak_bytes: int
    vocab_rows: int = 0
    warnings: list[str] = field(default_factory=list)
    plan_hash: str = ""
    calibration: dict[str, Any] | None = None  # provenance of the activation scores selection ranked by
    refit_peak_bytes: int = 0  # peak memory of the least-squares refit (0: no refit)

    @property
    def changes(self) -> dict[str, list[Any]]:
        """Config keys that change, {key: [old, new]}."""
        return config_changes(self.config, self.new_config)


def _axis_index(arch: Architecture, role: TensorRole, axis: int, binding: dict[str, int],
                keep: Keep, sizes: dict[str, int], cache: dict[Any, tuple[int, np.ndarray | None]]) -> tuple[int, np.ndarray | None]:
    """(expected input length, kept element indices or None) of one axis.

    Axes with the same segments and scopes share one read-only array (`cache`), so the plan's
    memory grows with the number of layers, not with the number of tensors.
    """
    scopes = tuple(
        ".".join(str(binding[p]) for p in arch.spaces[seg.space].per) if seg.space in arch.spaces else ""
        for seg in role.axes[axis]
    )
    key = (role.axes[axis], scopes)
    if key in cache:
        return cache[key]
    parts: list[np.ndarray] = []
    offset, pruned = 0, False
    for seg, scope in zip(role.axes[axis], scopes):
        if seg.space in arch.spaces:
            units, width = sizes[seg.space], segment_width(arch, seg, sizes)
            chosen = kept(keep, seg.space, scope)
            if chosen is not None and len(chosen) == units and list(chosen) == list(range(units)):
                chosen = None  # every unit in order (all layers kept): an unchanged axis
        else:
            units, width, chosen = 1, int(seg.space) if seg.space.isdigit() else sizes[seg.space], None
        if chosen is None:
            parts.append(np.arange(offset, offset + units * width, dtype=np.int64))
        else:
            pruned = True
            base = np.asarray(chosen, dtype=np.int64)[:, None] * width
            parts.append((base + np.arange(width, dtype=np.int64)).ravel() + offset)
        offset += units * width
    index = None
    if pruned:
        index = np.concatenate(parts)
        index = index.astype(np.int32) if offset < 2**31 else index
        index.flags.writeable = False
    cache[key] = (offset, index)
    return cache[key]


def _new_name(arch: Architecture, role: TensorRole, binding: dict[str, int], keep: Keep, layers: int) -> str | None:
    """The output name after renumbering, or None if a placeholder's index was dropped.

    Layers numbered from `layers` (num_hidden_layers) on are a table's `extra_layers` (MTP):
    always kept, renumbered to follow the kept layers, or, stored in a list of their own
    (`mtp.layers.{i}`, `extra_stored`), keeping their own numbers."""
    values: dict[str, int] = {}
    scope = ""
    for placeholder in role.placeholders:
        owner = arch.placeholders.get(placeholder, placeholder)
        chosen = keep.get("layers") if owner == "layers" else kept(keep, owner, scope)
        old = binding[placeholder]
        if owner == "layers" and arch.extra_layers and old >= layers:
            values[placeholder] = old - layers + (0 if role.extra else len(chosen))  # type: ignore[arg-type]
        elif chosen is not None:
            if old not in chosen:  # type: ignore[operator]
                return None
            values[placeholder] = chosen.index(old)  # type: ignore[union-attr]
        else:
            values[placeholder] = old
        scope = f"{scope}.{old}" if scope else str(old)
    return role.template.format(**values)


def _check_nesting(arch: Architecture, keep: Keep, sizes: dict[str, int]) -> None:
    for name, space in arch.spaces.items():
        if not space.within or name not in keep:
            continue
        per_group = sizes[name] // sizes[space.within]
        scopes = keep[name] if isinstance(keep[name], dict) else {"": keep[name]}
        for scope, heads in scopes.items():  # type: ignore[union-attr]
            groups = kept(keep, space.within, scope)
            groups = list(range(sizes[space.within])) if groups is None else groups
            counts = {g: 0 for g in groups}
            for h in heads:
                if h // per_group not in counts:
                    raise SpecError(f"keep: {name} {h} (layer {scope}) lies in a dropped {space.within} group {h // per_group}")
                counts[h // per_group] += 1
            if len(set(counts.values())) > 1:
                raise SpecError(f"keep: layer {scope} keeps different numbers of {name} per {space.within} group; GQA needs the same count")


def build_plan(ckpt: Checkpoint, arch: Architecture, spec: PruneSpec, source: dict[str, Any],
               block_bytes: int = BLOCK_BYTES) -> Plan:
    """Plan a pruning run; raises SpecError / ArchitectureError for what cannot be done."""
    config = ckpt.config
    sizes = source_sizes(arch, config)
    weights = sum(t.numel for t in ckpt.tensors.values())
    for space, size in sizes.items():  # before anything is allocated per unit of a space (or per layer)
        if size > max(weights, 1) or (space == "layers" and size > len(ckpt.tensors)):
            raise ArchitectureError(f"config.json gives {space} a size of {size}, more than the {weights} weights the "
                                    "checkpoint holds; the config does not match the weights")
    activation = _activation_scores(spec, config)
    influence = None  # depth from activation records: block influence, or angular distance of blocks
    if activation is not None and spec.depth != "ppl":
        influence = activation.angular() if (spec.depth or DEFAULT_DEPTH) == "block" else activation.layer_influence()
        n = sizes.get("layers", 0)
        if influence is not None and influence.shape not in ((n,), (n + 1, n + 1)):
            raise SpecError(f"scores {spec.scores} hold layer records of shape {list(influence.shape)} but the model has {n} "
                            "layers; the file is damaged or from another model, recalibrate")
        if influence is not None:
            influence = np.nan_to_num(influence.astype(np.float64), nan=np.inf)
    targets, layers = targets_and_layers(arch, sizes, spec, influence, config)
    scores = None
    if activation is not None:
        from .calibrate.scorefile import check_scores, needed_spaces, ranking

        check_scores(activation, config, needed_spaces(arch, sizes, targets))
        scores = ranking(activation, arch, sizes)
    elif spec.method == "magnitude":
        wanted = {s for s in arch.spaces if s not in ("layers", "vocab") and targets[s] != sizes[s]}
        wanted |= {arch.spaces[s].within for s in wanted if arch.spaces[s].within}  # type: ignore[misc]
        table = compute_scores(ckpt, arch, sizes, wanted, layers, block_bytes)
        # a scope no tensor carries (the experts of a dense layer of a MoE model) scores zero
        scores = lambda space, key: table.get((space, key), np.zeros(sizes[space]))  # noqa: E731
    keep = select_keep(arch, sizes, targets, spec, layers, scores, config)
    _check_nesting(arch, keep, sizes)
    check_targets(arch, sizes, targets, spec)
    if "vocab" in keep and keep["vocab"] and keep["vocab"][-1] >= sizes["vocab"]:  # type: ignore[index]
        raise SpecError(f"keep-vocab names token id {keep['vocab'][-1]} but the vocabulary has {sizes['vocab']}")  # type: ignore[index]
    pad = 0
    if spec.pad_vocab_to_multiple_of and "vocab" in keep:
        pad = -targets["vocab"] % spec.pad_vocab_to_multiple_of
    tied = is_tied(arch, config)
    quant = quant_format(config, spec.dequantize)
    hidden_scale = math.sqrt(sizes["hidden"] / targets["hidden"]) if "hidden" in targets else 1.0

    tensors: list[TensorPlan] = []
    axis_cache: dict[Any, tuple[int, np.ndarray | None]] = {}
    dropped: list[str] = []
    params_before = 0
    seen: set[tuple[str, tuple[tuple[str, int], ...]]] = set()
    for ref in ckpt.tensors.values():
        if quant and quant.is_scale(ref.name, ckpt):
            params_before += ref.numel  # planned with its weight (plan_quantized)
            continue
        claim = arch.claim(ref.name, sizes, config)
        if claim is None:  # a buffer the table drops (rotary inv_freq)
            dropped.append(ref.name)
            continue
        params_before += ref.numel
        role, binding = claim
        seen.add((role.role, tuple(sorted(binding.items()))))
        name = ref.name if role.copy else _new_name(arch, role, binding, keep, sizes["layers"])
        if name is None or (role.tied_to and tied):
            dropped.append(ref.name)
            continue
        if role.copy:  # a part the tables keep whole (a vision tower): its bytes as they are
            out = OutTensor(name, ref.dtype, tuple(ref.shape), ref.nbytes)
            tensors.append(TensorPlan(ref, out, role.role, (None,) * len(ref.shape)))
            continue
        in_shape = logical_shape(ref, quant)  # MXFP4 bytes: the values they hold
        if len(in_shape) != len(role.axes):
            raise ArchitectureError(f"{ref.name} has shape {list(in_shape)} but the {arch.family} table expects {len(role.axes)} axes")
        index, shape = [], []
        for axis in range(len(role.axes)):
            segments = role.axes[axis]
            if len(segments) == 1 and arch.dims.get(segments[0].space, {}).get("free"):
                length, idx = in_shape[axis], None  # a `free` dim: whatever the tensor holds, kept whole
            else:
                length, idx = _axis_index(arch, role, axis, binding, keep, sizes, axis_cache)
            if in_shape[axis] != length:
                raise ArchitectureError(
                    f"{ref.name} has {in_shape[axis]} elements on axis {axis} but config.json implies {length}; the config does not match the weights"
                )
            index.append(idx)
            shape.append(length if idx is None else len(idx))
        rows_pad = pad if role.axes[0][0].space == "vocab" else 0
        shape[0] += rows_pad
        rescale = hidden_factor(arch, role, hidden_scale, tied) if spec.norm_rescale else None
        offset = arch.norm_offset if rescale is not None and role.norm else 0.0
        itemsize = ref.nbytes // max(ref.numel, 1) if ref.numel else 0
        out = OutTensor(name, ref.dtype, tuple(shape), math.prod(shape) * itemsize)
        tensors.append(TensorPlan(ref, out, role.role, tuple(index), rescale, rows_pad, offset))
    check_required(arch, sizes, seen, tied, config)
    quant_notes: list[str] = []
    if quant:
        tensors, quant_config, quant_notes = plan_quantized(arch, ckpt, quant, tensors, config)

    vocab_rows = targets.get("vocab", 0) + pad
    new_config = rewrite_config(arch, config, sizes, targets, keep, vocab_rows)
    if quant:
        new_config.pop("quantization_config")
        if quant_config:
            new_config["quantization_config"] = quant_config
    if "vocab" in keep:
        from .vocab import remap_token_ids

        new_config = remap_token_ids(new_config, keep["vocab"])  # type: ignore[arg-type]
    shards = layout_shards([t.out for t in tensors], spec.max_shard_size)
    plan = Plan(
        arch=arch, spec=spec, source=source, sizes=sizes, targets=targets, keep=keep, config=config,
        new_config=new_config, tensors=tensors, shards=shards, dropped=dropped,
        params_before=params_before,
        params_after=sum(math.prod(t.out.shape) for t in tensors),
        bytes_before=ckpt.total_bytes, bytes_after=sum(t.out.nbytes for t in tensors),
        peak_bytes=_peak(tensors, block_bytes), vocab_rows=vocab_rows,
    )
    if activation is not None:
        plan.calibration = {k: activation.provenance.get(k) for k in ("data_hash", "data", "windows", "seq_len", "tokens", "config_hash", "version")}
    if spec.refit:
        from .refit.memory import check_refit_memory

        plan.refit_peak_bytes = check_refit_memory(plan, spec.calibration_samples or DEFAULT_SAMPLES,
                                                   spec.calibration_seq_len or DEFAULT_SEQ_LEN, spec.refit)
    plan.warnings = _warnings(plan, pad) + quant_notes
    plan.plan_hash = plan_hash(plan)
    return plan


def _activation_scores(spec: PruneSpec, config: dict[str, Any]) -> Any:
    """The scores file of an activation run (numpy only: the core path never imports torch)."""
    if spec.method != "activation" or spec.keep:
        return None
    if not spec.scores:
        raise SpecError("--method activation needs --scores SCORES (from 'prune-surgery calibrate') or --calibration FILE")
    from pathlib import Path

    from .calibrate.scorefile import load_scores

    return load_scores(Path(spec.scores))


def _peak(tensors: list[TensorPlan], block_bytes: int) -> int:
    """Working memory of the stream: blocks alive at once (workers + 1 queued for slicing, one in
    hand, two queued for the writer, one being written), the two temporaries each slicing worker holds
    while gathering a block pruned on two axes, index arrays, float32 copies of a rescaled block."""
    if not tensors:
        return 0

    def float_copies(t: TensorPlan) -> int:
        itemsize = max(1, t.out.nbytes // max(1, math.prod(t.out.shape)))
        return min(t.out.nbytes, block_bytes) // itemsize * 8  # values and result, float32

    block = max(min(t.out.nbytes, block_bytes) for t in tensors)
    index = max(sum(i.nbytes for i in t.index if i is not None) for t in tensors)
    rescaled = max((float_copies(t) for t in tensors if t.rescale or t.dequant), default=0)
    two_axes = any(sum(i is not None for i in t.index) > 1 for t in tensors)
    return (default_workers() * (3 if two_axes else 1) + 5) * block + index + rescaled


def _warnings(plan: Plan, pad: int) -> list[str]:
    notes = []
    if plan.targets["hidden"] != plan.sizes["hidden"]:
        if plan.arch.norm == "layernorm":
            notes.append("hidden pruning under LayerNorm is approximate: the mean and variance change; expect to recover by training"
                         + (f" ({plan.arch.approximate})" if plan.arch.approximate else ""))
        elif plan.arch.approximate:
            notes.append(f"hidden pruning is approximate for {plan.arch.family}: {plan.arch.approximate}")
        elif not plan.spec.norm_rescale:
            notes.append("--no-norm-rescale: RMSNorm now averages over fewer channels, so outputs differ from the masked original")
    for caveat in plan.arch.caveats:  # a table's `caveats`: cuts that are not what the user may think
        if plan.targets[caveat["when"]] != plan.sizes[caveat["when"]] and \
                ("config" not in caveat or config_get(plan.config, caveat["config"], caveat.get("default")) == caveat.get("is")):
            notes.append(caveat["note"])
    extra = plan.sizes.get(plan.arch.extra_layers or "", 0)
    per_layer = [s for s, sp in plan.arch.spaces.items() if "layer" in sp.per and plan.targets[s] != plan.sizes[s]]
    if extra and per_layer and plan.spec.method == "activation" and plan.spec.keep is None:
        notes.append(f"the {extra} MTP layer(s) after layer {plan.sizes['layers'] - 1} get no activation statistics (transformers does "
                     f"not run them): they keep the first units (per group) of {', '.join(per_layer)}; give them a keep file to choose")
    if pad:
        notes.append(f"vocabulary padded with {pad} zero rows: ids {plan.targets['vocab']}..{plan.targets['vocab'] + pad - 1} must never be sampled")
    if plan.spec.method == "magnitude" and plan.spec.keep is None:
        notes.append(MAGNITUDE_WARNING)
    if plan.spec.refit == "sequential" and "hidden" in plan.keep:
        notes.append(SEQUENTIAL_HIDDEN_WARNING)
    if plan.spec.keep is None and plan.spec.method == "random" and plan.params_after < plan.params_before:
        notes.append(f"random selection with seed {plan.spec.seed}; recovery training (10-20B tokens) is expected after pruning")
    return notes


def plan_hash(plan: Plan) -> str:
    """sha256 of everything that determines the output bytes."""
    digest = hashlib.sha256()
    digest.update(dump_json(plan.new_config).encode())
    for t in plan.tensors:
        extra = [t.rescale_offset] if t.rescale_offset else []
        digest.update(dump_json([t.source.name, t.out.name, t.out.dtype, list(t.out.shape), t.rescale, t.pad_rows, *extra]).encode())
        for idx in t.index:
            digest.update(b"-" if idx is None else idx.astype(np.int64).tobytes())
    digest.update(dump_json([[s.file, [x.name for x in s.tensors]] for s in plan.shards]).encode())
    return "sha256:" + digest.hexdigest()
