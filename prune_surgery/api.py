"""The Python API: ``inspect``, ``plan`` and ``run``; the CLI is a thin shell over these."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .arch import Architecture, architecture_for
from .backend import make_backend
from .checkpoint import Checkpoint, open_checkpoint
from .errors import CheckpointError, SpecError
from .guard import check_space
from .llamacpp.identity import source_tokenizer_entry
from .output import atomic_folder, bytes_needed, check_output, is_tokenizer_file, side_files
from .plan import BLOCK_BYTES, Plan, build_plan
from .sizes import source_sizes
from .spec import PruneSpec
from .storage import LocalStorage, Storage
from .stream import execute
from .verify import shard_digests


SCORES_NAME = "scores.safetensors"  # the activation statistics an output was selected by


@dataclass
class Source:
    """An opened checkpoint: where it lives and what it holds."""

    storage: Storage
    record: dict[str, Any]  # {"path", "repo_id", "revision", "commit"}
    checkpoint: Checkpoint
    arch: Architecture

    @property
    def local_root(self) -> Path | None:
        """The source folder on this machine, if it is one."""
        return self.storage.root if isinstance(self.storage, LocalStorage) else None


def open_source(src: str | Path, *, revision: str | None = None, stream: bool = False) -> Source:
    """Open a local folder or a Hub repo id and index its checkpoint."""
    path = Path(src)
    if path.exists():
        if revision:
            raise CheckpointError(f"--revision applies to Hub repos, but {src} is a local folder")
        storage: Storage = LocalStorage(path)
        record = {"path": str(path.resolve()), "repo_id": None, "revision": None, "commit": None}
    else:
        from .hub import looks_like_repo_id, resolve_hub_source

        if not looks_like_repo_id(str(src)):
            raise CheckpointError(f"source {src} is neither an existing folder nor a Hub repo id like org/name")
        storage, record = resolve_hub_source(str(src), revision, stream)
    ckpt = open_checkpoint(storage)
    return Source(storage, record, ckpt, architecture_for(ckpt.config))


def inspect(src: str | Path, *, revision: str | None = None, stream: bool = False) -> dict[str, Any]:
    """A summary of a checkpoint: family, sizes, parameters, dtypes, shards."""
    source = open_source(src, revision=revision, stream=stream)
    ckpt, arch = source.checkpoint, source.arch
    dtypes: dict[str, int] = {}
    for t in ckpt.tensors.values():
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.numel
    return {
        "source": source.record,
        "family": arch.family,
        "model_type": ckpt.config.get("model_type"),
        "sizes": source_sizes(arch, ckpt.config),
        "params": sum(t.numel for t in ckpt.tensors.values()),
        "bytes": ckpt.total_bytes,
        "dtypes": dtypes,
        "tensors": len(ckpt.tensors),
        "shards": {f: sum(t.nbytes for t in ckpt.tensors.values() if t.file == f) for f in ckpt.files},
    }


def plan(src: str | Path, spec: PruneSpec | None = None, *, revision: str | None = None,
         stream: bool = False, block_bytes: int = BLOCK_BYTES, out: str | Path | None = None) -> Plan:
    """Plan a pruning run without writing anything (`--calibration` data is calibrated in a temporary folder).

    With `out`, also check that its filesystem has room for everything the run would write.
    """
    source = open_source(src, revision=revision, stream=stream)
    with tempfile.TemporaryDirectory(prefix="prune-surgery-") as work:
        spec = with_scores(src, spec or PruneSpec(), Path(work), revision)
        the_plan = build_plan(source.checkpoint, source.arch, spec, source.record, block_bytes)
    if out is not None:
        check_space(Path(out).resolve(), _needed(the_plan, source.storage))
    return the_plan


def _needed(the_plan: Plan, storage: Storage) -> int:
    kept = sum(len(v) if isinstance(v, list) else sum(len(x) for x in v.values()) for v in the_plan.keep.values())
    return bytes_needed(the_plan.shards, storage, kept)


def with_scores(src: str | Path, spec: PruneSpec, work: Path, revision: str | None = None,
                device: str | None = None) -> PruneSpec:
    """`spec` with a scores file: calibrated now into `work` (on `device`, default cpu) when only
    `--calibration` data was given; with `--depth ppl`, the layers to drop are chosen now by
    perplexity on the calibration data."""
    if spec.depth == "ppl" and spec.drop_layers is None and not spec.keep:
        spec = _depth_by_ppl(src, spec, revision, device or "cpu")
    if spec.method != "activation" or spec.scores or not spec.calibration or spec.keep:
        return spec
    from .calibrate.calibration import calibrate

    path = work / SCORES_NAME
    calibrate(src, spec.calibration, path, revision=revision, device=device or "cpu", **calibration_size(spec))
    return replace(spec, scores=str(path))


def _depth_by_ppl(src: str | Path, spec: PruneSpec, revision: str | None, device: str) -> PruneSpec:
    source = open_source(src, revision=revision)
    sizes = source_sizes(source.arch, source.checkpoint.config)
    target = next((spec.sizes[k] for k in source.arch.spaces["layers"].keys if k in spec.sizes), sizes["layers"])
    if target >= sizes["layers"]:
        return spec
    from .calibrate.depth import SPLIT_SAMPLES, greedy_ppl_drop

    assert spec.calibration
    drop = greedy_ppl_drop(src, spec.calibration, sizes["layers"] - target, revision=revision, device=device,
                           samples=min(spec.calibration_samples or SPLIT_SAMPLES, SPLIT_SAMPLES),
                           seq_len=spec.calibration_seq_len or 256)
    return replace(spec, drop_layers=tuple(drop))


def calibration_size(spec: PruneSpec) -> dict[str, int]:
    """The windows a spec asks calibration (and refit) to use; the defaults of `calibrate` otherwise."""
    sizes = {"samples": spec.calibration_samples, "seq_len": spec.calibration_seq_len}
    return {k: v for k, v in sizes.items() if v}


def run(src: str | Path, out: str | Path, spec: PruneSpec | None = None, *, revision: str | None = None,
        stream: bool = False, overwrite: bool = False, device: str | None = None, workers: int | None = None,
        block_bytes: int = BLOCK_BYTES, command: str | None = None,
        progress: Callable[[Plan], Callable[[int], None] | None] | None = None,
        note: Callable[[str], None] | None = None) -> Plan | dict[str, Any]:
    """Prune `src` into the folder `out` (atomically) and return the executed plan.

    A Megatron-LM checkpoint folder is pruned rank by rank instead (see `run_megatron`), and
    its run record is returned.

    `progress`, if given, is called with the plan and returns a callback that receives the
    number of bytes written after each tensor.  `note` receives one-line remarks (leftovers of
    killed runs removed or left alone; default: printed to stderr).
    """
    out = Path(out)
    if not revision and Path(src).is_dir():
        from .megatron import is_megatron_checkpoint

        if is_megatron_checkpoint(Path(src)):
            return run_megatron(Path(src), out, spec or PruneSpec(), overwrite=overwrite, command=command)
    source = open_source(src, revision=revision, stream=stream)
    check_output(out, source.local_root, overwrite)
    backend = make_backend(device)
    with tempfile.TemporaryDirectory(prefix="prune-surgery-") as work:
        spec = with_scores(src, spec or PruneSpec(), Path(work), revision, device)
        the_plan = build_plan(source.checkpoint, source.arch, spec, source.record, block_bytes)
        callback = progress(the_plan) if progress else None
        needed = _needed(the_plan, source.storage)
        with atomic_folder(out, overwrite=overwrite, needed=needed, note=note) as tmp:
            execute(the_plan, source.storage, tmp, backend=backend, block_bytes=block_bytes, workers=workers, progress=callback)
            write_side_files(the_plan, source.storage, tmp)
            (tmp / "config.json").write_text(json.dumps(the_plan.new_config, indent=2, sort_keys=True) + "\n")
            refit = None
            if spec.refit:
                from .refit import refit_folder

                refit = refit_folder(the_plan, source, tmp, spec, device=device)  # rewrites tensor values in place
            digests = shard_digests(tmp, [s.file for s in the_plan.shards])
            record = run_record(the_plan, command, digests)
            record.update(source_tokenizer_entry(source.storage, "vocab" in the_plan.keep))  # for `prune-surgery gguf`
            if refit is not None:
                record["refit"] = refit
            if spec.method == "activation" and spec.scores and not spec.keep:
                shutil.copyfile(spec.scores, tmp / SCORES_NAME)  # the statistics the selection ranked by
                record["spec"]["scores"] = SCORES_NAME
            (tmp / "prune_surgery.json").write_text(record_json(record))
    return the_plan


def megatron_keep(src: Path, spec: PruneSpec) -> tuple[dict[str, Any], PruneSpec, Architecture, dict[str, int], dict[str, int]]:
    """Kept indices for a Megatron checkpoint, chosen from its sizes (balanced over its TP ranks).

    Returns (keep, the effective spec, architecture, source sizes, target sizes).
    """
    from .megatron import read_checkpoint
    from .megatron.importer import megatron_config
    from .select import select_keep, targets_and_layers

    if spec.method not in ("random", "magnitude"):
        raise SpecError(
            f"--method {spec.method} is not available on Megatron checkpoints yet; "
            "'prune-surgery megatron import' to Hugging Face, prune there, and 'megatron export' back"
        )
    ckpt = read_checkpoint(src)
    config = megatron_config(ckpt)
    arch = architecture_for(config)
    spec = spec if spec.balance or spec.keep else replace(spec, balance=ckpt.tp)
    sizes = source_sizes(arch, config)
    targets, layers = targets_and_layers(arch, sizes, spec, config=config)
    return select_keep(arch, sizes, targets, spec, layers), spec, arch, sizes, targets


def run_megatron(src: Path, out: Path, spec: PruneSpec, *, overwrite: bool = False, command: str | None = None) -> dict[str, Any]:
    """Prune a Megatron-LM tensor-parallel checkpoint rank by rank; returns its run record."""
    from .megatron import prune_megatron, read_checkpoint

    if spec.method != "random" or spec.keep_vocab is not None:  # through an HF view: import, prune, export
        from .megatron.via_hf import prune_via_hf

        dist = read_checkpoint(src).location.dist
        if not dist and not spec.balance and not spec.keep:
            spec = replace(spec, balance=read_checkpoint(src).tp)
        return prune_via_hf(src, out, lambda hf, pruned: run(hf, pruned, spec, command=command),
                            tp=spec.balance if dist else None, overwrite=overwrite)
    keep, spec, arch, sizes, targets = megatron_keep(src, spec)
    prune_megatron(src, out, keep, norm_rescale=spec.norm_rescale, train_tp=spec.balance, overwrite=overwrite)
    record_path = out / "prune_surgery.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update({
        "tool": "prune-surgery", "version": __version__, "family": arch.family, "command": command,
        "source": {"path": str(src.resolve()), "repo_id": None, "revision": None, "commit": None, "format": "megatron"},
        "spec": spec.to_json(), "method": spec.method, "seed": spec.seed, "norm_rescale": spec.norm_rescale,
        "sizes": {"before": sizes, "after": targets}, "keep": keep,
    })
    record_path.write_text(record_json(record))
    return record


def write_side_files(plan: Plan, storage: Storage, out_dir: Path) -> None:
    """Copy tokenizer and generation files; rewrite them when the vocabulary is pruned."""
    names = side_files(storage)
    if "vocab" not in plan.keep:
        for name in names:
            (out_dir / name).write_bytes(storage.read_bytes(name))
        return
    from .vocab import remap_token_ids, rewrite_tokenizer_files

    staging = out_dir / ".source-tokenizer"
    staging.mkdir()
    try:
        for name in names:
            target = staging if is_tokenizer_file(name) else out_dir
            (target / name).write_bytes(storage.read_bytes(name))
        rewrite_tokenizer_files(staging, out_dir, plan.keep["vocab"], plan.vocab_rows)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    generation = out_dir / "generation_config.json"
    if generation.exists():
        config = remap_token_ids(json.loads(generation.read_text()), plan.keep["vocab"])  # type: ignore[arg-type]
        generation.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def record_json(record: dict[str, Any]) -> str:
    """prune_surgery.json text: one line per top-level key (and per space of "keep"), lists compact."""
    def compact(value: Any) -> str:
        return json.dumps(value, separators=(", ", ": "))

    lines = []
    for key, value in record.items():
        if key == "keep" and isinstance(value, dict):
            inner = ",\n".join(f"  {json.dumps(k)}: {compact(v)}" for k, v in value.items())
            lines.append(f' "keep": {{\n{inner}\n }}')
        else:
            lines.append(f" {json.dumps(key)}: {compact(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def run_record(plan: Plan, command: str | None, sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """The content of OUT/prune_surgery.json: enough to reproduce the run byte for byte.

    `sha256` maps each written shard to its digest (what `prune-surgery verify` checks)."""
    return {
        "tool": "prune-surgery",
        "version": __version__,
        "source": plan.source,
        "command": command,
        "family": plan.arch.family,
        "spec": plan.spec.to_json(),
        "method": plan.spec.method,
        "seed": plan.spec.seed,
        "norm_rescale": plan.spec.norm_rescale,
        "calibration": plan.calibration,
        "params": {"before": plan.params_before, "after": plan.params_after},
        "config_changes": plan.changes,
        "plan_hash": plan.plan_hash,
        **({"sha256": sha256} if sha256 is not None else {}),
        "keep": plan.keep,
    }
