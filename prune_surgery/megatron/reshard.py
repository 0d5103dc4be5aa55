"""Change the tensor-parallel size or the format (torch <-> torch_dist) of a Megatron checkpoint, one new rank at a time.

Each new rank's tensor is gathered straight from the overlapping slices of the old
(memory-mapped) ranks; the vocabulary padding is recomputed for the new TP size.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecError
from ..output import atomic_folder, check_output
from .args import build_args
from .folder import MegatronCheckpoint, copy_side, from_raw, read_checkpoint
from .layout import Shapes, padded_vocab, rank_part
from .writer import check_format, dist_args, write_megatron, write_train_args

if TYPE_CHECKING:
    import torch


def _tensor(ckpt: MegatronCheckpoint, shapes: Shapes, tp: int, rank: int, role: str, layer: int | None) -> torch.Tensor:
    return from_raw(rank_part(role, shapes, tp, rank, ckpt.reader(role, layer)), ckpt.dtype(role, layer))


def reshard_megatron(src: Path, out: Path, *, tp: int, spec: str | None = None, vocab_size: int | None = None,
                     fmt: str | None = None, overwrite: bool = False) -> None:
    """Rewrite the Megatron checkpoint at `src` with tensor-parallel size `tp` into `out`.

    `spec` ("te" or "local") changes the layer-spec key names; by default the source's is
    kept (the older ``language_model`` layout is written as mcore "te").  `vocab_size` is the
    unpadded vocabulary, needed to pad exactly as Megatron does for checkpoints that do not
    record it (those not made by `export_hf`); it is recorded for later steps.  `fmt` is the
    output format, "torch" (rank files) or "torch_dist" (default: the source's); for torch_dist,
    `tp` fixes the vocabulary padding and the TP size written to ``train_args.sh``.
    """
    ckpt = read_checkpoint(Path(src), vocab_size=vocab_size)
    fmt = check_format(fmt or ("torch_dist" if ckpt.location.dist else "torch"))
    spec = spec or ("te" if ckpt.spec in ("legacy", "dist") else ckpt.spec)
    if spec not in ("te", "local"):
        raise SpecError(f"layer spec must be te or local, got {spec!r}")
    divisible_by = int(ckpt.side.get("make_vocab_size_divisible_by", ckpt.args.get("make_vocab_size_divisible_by", 128)))
    old = ckpt.shapes
    new_vocab = padded_vocab(ckpt.vocab, tp, divisible_by)
    shapes = Shapes(old.layers, old.hidden, old.ffn, old.heads, old.groups, old.head_dim, new_vocab)
    shapes.check_tp(tp)
    check_output(Path(out), ckpt.location.root, overwrite)
    iteration = ckpt.location.iteration
    args = dist_args(build_args(ckpt.args, shapes, tp=tp, tied=ckpt.tied, eps=ckpt.eps, dtype=ckpt.dtype("embedding"),
                                spec=spec, divisible_by=divisible_by), fmt)
    parts = 1 if fmt == "torch_dist" else tp
    with atomic_folder(Path(out)) as tmp:
        write_megatron(tmp, fmt, args, iteration, shapes, spec, ckpt.tied, partial(_tensor, ckpt, shapes, parts))
        copy_side(ckpt.location.root, tmp, {**ckpt.side, "vocab_size": ckpt.vocab, "make_vocab_size_divisible_by": divisible_by})
        write_train_args(tmp, Path(out), args, ckpt.vocab)
