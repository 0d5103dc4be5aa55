"""Prune a Megatron checkpoint through a Hugging Face view: import, prune with any method, export.

Used for what Megatron-side pruning does not do itself (score-based methods, vocabulary
pruning): the checkpoint is imported to a temporary HF folder beside the output, pruned there
by the regular engine (so the result equals pruning the HF model), and exported back in the
source's format and TP size.  Costs one temporary copy of the model on disk.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..output import atomic_folder, check_output
from .export import export_hf
from .folder import read_checkpoint
from .importer import import_megatron


def prune_via_hf(src: Path, out: Path, run_hf: Callable[[Path, Path], Any], *, tp: int | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Import `src`, call ``run_hf(hf_folder, pruned_folder)``, export the result to `out` in the
    source's format (TP size `tp`, default the source's) and return the HF run's record."""
    ckpt = read_checkpoint(Path(src))
    fmt = "torch_dist" if ckpt.location.dist else "torch"
    spec = "te" if ckpt.spec in ("legacy", "dist") else ckpt.spec
    divisible_by = int(ckpt.side.get("make_vocab_size_divisible_by", ckpt.args.get("make_vocab_size_divisible_by", 128)))
    out = Path(out)
    check_output(out, ckpt.location.root, overwrite)
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.via-hf-", dir=out.resolve().parent) as work:
        hf, pruned, meg = Path(work, "hf"), Path(work, "pruned"), Path(work, "meg")
        import_megatron(Path(src), hf)
        run_hf(hf, pruned)
        export_hf(pruned, meg, tp=tp or ckpt.tp, spec=spec, iteration=ckpt.location.iteration,  # type: ignore[arg-type]
                  divisible_by=divisible_by, fmt=fmt)
        record = json.loads((pruned / "prune_surgery.json").read_text())
        record["megatron"] = {"format": fmt, "tp": tp or ckpt.tp, "via": "hf"}
        (meg / "prune_surgery.json").write_text(json.dumps(record, indent=1) + "\n")
        with atomic_folder(out) as tmp:
            for child in meg.iterdir():
                shutil.move(str(child), tmp / child.name)
    return record
