"""Megatron-core checkpoints (per-rank ``torch`` and ``torch_dist``): HF export/import, TP resharding
and format conversion, balanced pruning, and ``train_args.sh`` for continued training.

Needs torch (the optional extra); torch is imported inside the functions, never when this
package is imported.

- :func:`export_hf` — HF LLaMA safetensors -> Megatron (any TP size, GQA)
- :func:`import_megatron` — Megatron (mcore or older ``language_model`` layout) -> HF
- :func:`reshard_megatron` — change the TP size
- :func:`prune_megatron` — apply kept indices per rank (balanced)
- :func:`is_megatron_checkpoint` — does a folder look like one (no torch needed)
- :func:`megatron_config` — the HF config of a Megatron checkpoint (for selecting kept indices)
"""

from __future__ import annotations

from .export import export_hf
from .folder import is_megatron_checkpoint, read_checkpoint
from .importer import import_megatron, megatron_config
from .prune import prune_megatron
from .reshard import reshard_megatron

__all__ = [
           "export_hf",
           "import_megatron",
           "is_megatron_checkpoint",
           "megatron_config",
           "prune_megatron",
           "read_checkpoint",
           "reshard_megatron",
]
