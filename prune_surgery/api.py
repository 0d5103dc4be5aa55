"""The Python API: ``inspect``, ``plan`` and ``run``; the CLI is a thin shell over these."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .arch import Architecture, architecture_for
from .backend import make_backend
from .checkpoint import Checkpoint, open_checkpoint
from .errors import CheckpointError
from .output import atomic_folder, check_output, is_tokenizer_file, side_files
from .plan import Plan, build_plan
from .sizes import source_sizes
from .spec import PruneSpec
from .storage import LocalStorage, Storage
from .stream import execute

DEFAULT_BLOCK_BYTES = 64 << 20


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
         stream: bool = False, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Plan:
    """Plan a pruning run without writing anything."""
    source = open_source(src, revision=revision, stream=stream)
    return build_plan(source.checkpoint, source.arch, spec or PruneSpec(), source.record, block_bytes)


def run(src: str | Path, out: str | Path, spec: PruneSpec | None = None, *, revision: str | None = None,
        stream: bool = False, overwrite: bool = False, device: str | None = None, workers: int = 1,
        block_bytes: int = DEFAULT_BLOCK_BYTES, command: str | None = None,
        progress: Callable[[Plan], Callable[[int], None] | None] | None = None) -> Plan:
    """Prune `src` into the folder `out` (atomically) and return the executed plan.

    `progress`, if given, is called with the plan and returns a callback that receives the
    number of bytes written after each tensor.
    """
    out = Path(out)
    source = open_source(src, revision=revision, stream=stream)
    check_output(out, source.local_root, overwrite)
    backend = make_backend(device)
    the_plan = build_plan(source.checkpoint, source.arch, spec or PruneSpec(), source.record, block_bytes)
    callback = progress(the_plan) if progress else None
    with atomic_folder(out) as tmp:
        execute(the_plan, source.storage, tmp, backend=backend, block_bytes=block_bytes, workers=workers, progress=callback)
        write_side_files(the_plan, source.storage, tmp)
        (tmp / "config.json").write_text(json.dumps(the_plan.new_config, indent=2, sort_keys=True) + "\n")
        (tmp / "prune_surgery.json").write_text(json.dumps(run_record(the_plan, command), indent=1) + "\n")
    return the_plan


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


def run_record(plan: Plan, command: str | None) -> dict[str, Any]:
    """The content of OUT/prune_surgery.json: enough to reproduce the run byte for byte."""
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
        "params": {"before": plan.params_before, "after": plan.params_after},
        "config_changes": plan.changes,
        "plan_hash": plan.plan_hash,
        "keep": plan.keep,
    }
