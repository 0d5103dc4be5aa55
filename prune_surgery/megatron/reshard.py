"""Change the tensor-parallel size of a Megatron checkpoint (TP a -> b), one new rank at a time.

Each new rank's tensor is gathered straight from the overlapping slices of the old
(memory-mapped) ranks; the vocabulary padding is recomputed for the new TP size.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecError
from ..output import atomic_folder, check_output
from .args import build_args, rank_content
from .folder import MegatronCheckpoint, copy_side, from_raw, rank_model, rank_path, read_checkpoint, write_tracker
from .layout import Shapes, padded_vocab, rank_part
from .safeload import save_rank_file

if TYPE_CHECKING:
    import torch


def _tensor(ckpt: MegatronCheckpoint, shapes: Shapes, tp: int, rank: int, role: str, layer: int | None) -> torch.Tensor:
    return from_raw(rank_part(role, shapes, tp, rank, ckpt.reader(role, layer)), ckpt.dtype(role, layer))


def reshard_megatron(src: Path, out: Path, *, tp: int, spec: str | None = None, vocab_size: int | None = None,
                     overwrite: bool = False) -> None:
    """Rewrite the Megatron checkpoint at `src` with tensor-parallel size `tp` into `out`.

    `spec` ("te" or "local") changes the layer-spec key names; by default the source's is
    kept (the older ``language_model`` layout is written as mcore "te").  `vocab_size` is the
    unpadded vocabulary, needed to pad exactly as Megatron does for checkpoints that do not
    record it (those not made by `export_hf`); it is recorded for later steps.
    """
    ckpt = read_checkpoint(Path(src), vocab_size=vocab_size)
    spec = spec or ("te" if ckpt.spec == "legacy" else ckpt.spec)
    if spec not in ("te", "local"):
        raise SpecError(f"layer spec must be te or local, got {spec!r}")
    divisible_by = int(ckpt.side.get("make_vocab_size_divisible_by", ckpt.args.get("make_vocab_size_divisible_by", 128)))
    old = ckpt.shapes
    new_vocab = padded_vocab(ckpt.vocab, tp, divisible_by)
    shapes = Shapes(old.layers, old.hidden, old.ffn, old.heads, old.groups, old.head_dim, new_vocab)
    shapes.check_tp(tp)
    check_output(Path(out), ckpt.location.root, overwrite)
    iteration = ckpt.location.iteration
    args = build_args(ckpt.args, shapes, tp=tp, tied=ckpt.tied, eps=ckpt.eps, dtype=ckpt.dtype("embedding"),
                      spec=spec, divisible_by=divisible_by)
    with atomic_folder(Path(out)) as tmp:
        folder = write_tracker(tmp, iteration)
        for rank in range(tp):
            model = rank_model(shapes, spec, ckpt.tied, partial(_tensor, ckpt, shapes, tp, rank))
            save_rank_file(rank_path(folder, rank), rank_content(args, iteration, model))
            del model
        copy_side(ckpt.location.root, tmp, {**ckpt.side, "vocab_size": ckpt.vocab, "make_vocab_size_divisible_by": divisible_by})
