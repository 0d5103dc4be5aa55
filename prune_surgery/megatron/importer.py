"""Megatron checkpoint (any TP size, mcore or older layout) -> Hugging Face safetensors folder.

Each HF tensor is gathered from the memory-mapped rank files and written straight into its
shard (headers first, from the planned shapes), one tensor at a time.  ``config.json`` and
tokenizer files come from ``hf_files/`` when the checkpoint was made by `export_hf`; a
checkpoint Megatron wrote itself gets a LLaMA config built from its args.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..output import atomic_folder, check_output
from ..sink import OutTensor, ShardWriter, layout_shards, write_index
from .folder import HF_DIR, MegatronCheckpoint, read_checkpoint
from .hf import LAYER_PARTS, hf_name, import_config, part_shape
from .layout import qkv_to_hf

DEFAULT_SHARD_BYTES = 5_000_000_000  # save_pretrained's default "5GB"
_ROLE_OF = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "fc1", "up": "fc1"}


class _Gather:
    """Whole HF tensors from a Megatron checkpoint; keeps the last split QKV for its siblings."""

    def __init__(self, ckpt: MegatronCheckpoint, vocab: int) -> None:
        self.ckpt, self.vocab = ckpt, vocab
        self._qkv: tuple[int | None, tuple[np.ndarray, ...]] = (None, ())

    def __call__(self, part: str, layer: int | None) -> np.ndarray:
        ckpt, shapes = self.ckpt, self.ckpt.shapes
        if part in ("embedding", "output"):
            return ckpt.reader(part)(0, 0, self.vocab)
        if part in ("input_norm", "mlp_norm", "final_norm"):
            return ckpt.norm(part, layer)
        if part in ("q", "k", "v"):
            if self._qkv[0] != layer:
                whole = ckpt.reader("qkv", layer)(0, 0, shapes.segment_length("qkv"))
                self._qkv = (layer, qkv_to_hf(whole, shapes))
            return self._qkv[1]["qkv".index(part)]
        if part in ("gate", "up"):
            return ckpt.reader("fc1", layer)(0 if part == "gate" else 1, 0, shapes.ffn)
        return ckpt.reader(part, layer)(0, 0, shapes.segment_length(part))


def _planned(ckpt: MegatronCheckpoint, vocab: int) -> list[tuple[OutTensor, str, int | None]]:
    items: list[tuple[str, int | None]] = [("embedding", None), ("final_norm", None)]
    items += [] if ckpt.tied else [("output", None)]
    items += [(part, i) for i in range(ckpt.shapes.layers) for part in LAYER_PARTS]
    planned: list[tuple[OutTensor, str, int | None]] = []
    for part, layer in items:
        dtype = ckpt.dtype(_ROLE_OF.get(part, part), layer)
        shape = part_shape(part, ckpt.shapes, vocab)
        nbytes = int(np.prod(shape)) * {"F32": 4, "BF16": 2, "F16": 2}[dtype]
        planned.append((OutTensor(hf_name(part, layer), dtype, shape, nbytes), part, layer))
    planned.sort(key=lambda item: item[0].name)  # save_pretrained's order
    return planned


def import_megatron(src: Path, out: Path, *, vocab_size: int | None = None,
                    max_shard_size: int = DEFAULT_SHARD_BYTES, overwrite: bool = False) -> None:
    """Convert the Megatron checkpoint at `src` into a Hugging Face LLaMA folder at `out`.

    `vocab_size` drops Megatron's vocabulary padding; it defaults to the size recorded at
    export (or, for checkpoints Megatron wrote itself, the padded size).
    """
    ckpt = read_checkpoint(Path(src), vocab_size=vocab_size)
    vocab = ckpt.vocab
    check_output(Path(out), ckpt.location.root, overwrite)
    planned = _planned(ckpt, vocab)
    shards = layout_shards([t for t, _, _ in planned], max_shard_size)
    where = {t.name: (part, layer) for t, part, layer in planned}
    gather = _Gather(ckpt, vocab)
    with atomic_folder(Path(out)) as tmp:
        for shard in shards:
            writer = ShardWriter(tmp / shard.file, shard)
            try:
                for tensor in shard.tensors:
                    writer.begin(tensor.name)
                    writer.write(np.ascontiguousarray(gather(*where[tensor.name])).data)
                    writer.end()
            except BaseException:
                writer.abort()
                raise
            writer.close()
        write_index(tmp, shards)
        _write_side(ckpt, tmp)


def _config(ckpt: MegatronCheckpoint) -> tuple[dict[str, Any], str]:
    hf_dir = ckpt.location.root / HF_DIR
    original_text = (hf_dir / "config.json").read_text() if (hf_dir / "config.json").is_file() else ""
    original: dict[str, Any] = json.loads(original_text) if original_text else {}
    hf_layers = list(ckpt.side.get("hf_layers", range(ckpt.shapes.layers)))
    config = import_config(original, ckpt.shapes, ckpt.vocab, ckpt.tied, ckpt.eps, ckpt.dtype("embedding"), hf_layers)
    return config, original_text if config == original else json.dumps(config, indent=2, sort_keys=True) + "\n"


def megatron_config(src: Path | MegatronCheckpoint, *, vocab_size: int | None = None) -> dict[str, Any]:
    """The Hugging Face config.json that `import_megatron` would write for a checkpoint
    (a folder, or one already read with `read_checkpoint`).

    Selection code that works on HF sizes (heads, kv heads, ffn, hidden, layers) can choose
    kept indices from it and hand them to `prune_megatron`; index spaces are the same.
    """
    ckpt = src if isinstance(src, MegatronCheckpoint) else read_checkpoint(Path(src), vocab_size=vocab_size)
    return _config(ckpt)[0]


def _write_side(ckpt: MegatronCheckpoint, out: Path) -> None:
    (out / "config.json").write_text(_config(ckpt)[1])
    hf_dir = ckpt.location.root / HF_DIR
    if hf_dir.is_dir():
        for file in sorted(hf_dir.iterdir()):
            if file.is_file() and file.name != "config.json":
                (out / file.name).write_bytes(file.read_bytes())
