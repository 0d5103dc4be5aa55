"""Hugging Face LLaMA safetensors -> Megatron-core checkpoint with any tensor-parallel size.

One rank is built at a time, one tensor at a time, from memory-mapped shards: peak memory
is one rank's state dict (the model divided by TP) plus one tensor.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import open_checkpoint
from ..errors import SpecError
from ..output import atomic_folder, check_output, side_files
from ..storage import LocalStorage
from .args import build_args, hf_to_args
from .folder import HF_DIR, SIDE_FILE, TORCH_DTYPES, from_raw
from .hf import HFReader, hf_shapes
from .layout import Shapes, rank_part
from .writer import check_format, dist_args, write_megatron, write_train_args

if TYPE_CHECKING:
    import torch

SPECS = ("te", "local")


def _tensor(source: HFReader, shapes: Shapes, tp: int, rank: int, role: str, layer: int | None) -> torch.Tensor:
    return from_raw(rank_part(role, shapes, tp, rank, source.reader(role, layer)), source.dtype(role, layer))


def export_hf(src: Path, out: Path, *, tp: int = 1, spec: str = "te", iteration: int | str = 1,
              divisible_by: int = 128, fmt: str = "torch", overwrite: bool = False) -> None:
    """Convert the HF LLaMA checkpoint in folder `src` into a Megatron checkpoint at `out`.

    `spec` picks the layer-spec key names: "te" (TransformerEngine, Megatron-LM's default:
    norms fused into ``linear_qkv`` / ``linear_fc1``) or "local".  The vocabulary is padded
    to a multiple of ``divisible_by * tp`` as Megatron does.  `config.json` and tokenizer files
    are kept under ``hf_files/`` so that `import_megatron` restores them exactly.
    """
    if spec not in SPECS:
        raise SpecError(f"layer spec must be one of {', '.join(SPECS)}, got {spec!r}")
    check_format(fmt)
    if iteration != "release" and int(iteration) < 0:
        raise SpecError(f"iteration must be >= 0, got {iteration}")
    storage = LocalStorage(Path(src))
    ckpt = open_checkpoint(storage)
    shapes, vocab, tied = hf_shapes(ckpt.config, tp, divisible_by)
    source = HFReader(ckpt, shapes, vocab, tied)
    check_output(Path(out), storage.root, overwrite)
    dtype = source.dtype("embedding")
    for ref in ckpt.tensors.values():
        if ref.dtype not in TORCH_DTYPES:
            raise SpecError(f"{ref.name} is {ref.dtype}; Megatron export supports {', '.join(TORCH_DTYPES)} weights")
    eps = float(ckpt.config.get("rms_norm_eps", 1e-6))
    args = dist_args(build_args(hf_to_args(ckpt.config), shapes, tp=tp, tied=tied, eps=eps, dtype=dtype,
                                spec=spec, divisible_by=divisible_by), fmt)
    parts = 1 if fmt == "torch_dist" else tp
    try:
        with atomic_folder(Path(out)) as tmp:
            write_megatron(tmp, fmt, args, iteration, shapes, spec, tied, partial(_tensor, source, shapes, parts))
            (tmp / HF_DIR).mkdir()
            for name in ["config.json", *side_files(storage)]:
                (tmp / HF_DIR / name).write_bytes(storage.read_bytes(name))
            side = {"format_version": 1, "vocab_size": vocab, "make_vocab_size_divisible_by": divisible_by,
                    "hf_layers": list(range(shapes.layers)), "source": str(storage.root)}
            (tmp / SIDE_FILE).write_text(json.dumps(side, indent=1) + "\n")
            write_train_args(tmp, Path(out), args, vocab)
    finally:
        source.close()
