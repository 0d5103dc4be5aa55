"""Block-quantized checkpoints: FP8 weights with per-block scales (DeepSeek-V3, GLM-4.5-FP8).

A quantized weight `X.weight` (F8_E4M3) comes with `X.weight_scale_inv` (F32, one value per
`weight_block_size` block, the last block of an axis possibly partial); the value is
`fp8 * scale`.  After the plan has sliced every weight by element indices, this module
decides, per weight:

- every pruned axis keeps whole blocks (experts, layers, o_proj's 128-wide MLA heads...): the
  FP8 bytes are sliced as usual and the scale tensor is sliced by the kept blocks, so the
  format is kept bit for bit;
- any other cut (or `--dequantize`, or a weight that must be rescaled): the weight is
  dequantized on write to the model's dtype (config `dtype` / `torch_dtype`, bf16 if unset),
  its scale tensor is dropped, and its module joins `quantization_config.modules_to_not_convert`
  (the whole config entry is dropped when nothing stays quantized).

Weights that transformers fuses into one module (the `{expert}` tensors of a layer) are
dequantized together or not at all.  Unknown `quant_method`s are refused before anything is
written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .dtypes import ITEMSIZE, raw_dtype, to_float32
from .errors import ArchitectureError

if TYPE_CHECKING:
    from .arch import Architecture
    from .checkpoint import Checkpoint, TensorRef
    from .plan import TensorPlan
    from .storage import Storage

SCALE_SUFFIX = "_scale_inv"
KNOWN = ("fp8",)
_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@dataclass(frozen=True)
class Dequant:
    """How to dequantize one weight while streaming it: its scale tensor and block shape."""

    scale: "TensorRef"
    block: tuple[int, int]


@dataclass(frozen=True)
class Fp8Blocks:
    """A checkpoint's FP8 block quantization (from config.quantization_config)."""

    block: tuple[int, int]
    out_dtype: str  # what dequantized weights are written as
    force: bool  # --dequantize

    def is_scale(self, name: str, ckpt: "Checkpoint") -> bool:
        """True for a scale tensor whose weight is in the checkpoint (planned with the weight)."""
        return name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] in ckpt.tensors


def quant_format(config: dict[str, Any], dequantize: bool) -> Fp8Blocks | None:
    """The checkpoint's quantization, None if it has none; raise for a format we do not know."""
    qc = config.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    block = qc.get("weight_block_size") if isinstance(qc, dict) else None
    if method not in KNOWN or not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ArchitectureError(
            f"quantization_config with quant_method {method!r} (weight_block_size {block!r}) is not supported; "
            "supported: fp8 with a two-number weight_block_size; dequantize the checkpoint first"
        )
    dtype = _DTYPES.get(str(config.get("dtype") or config.get("torch_dtype") or "bfloat16"), "BF16")
    return Fp8Blocks((block[0], block[1]), dtype, dequantize)


def _blocks(index: np.ndarray | None, length: int, block: int) -> np.ndarray | None | bool:
    """Kept block numbers if `index` keeps whole blocks of `block` elements (None: all kept),
    False if it cuts into a block."""
    if index is None:
        return None
    kept = np.unique(np.asarray(index, dtype=np.int64) // block)
    whole = np.concatenate([np.arange(b * block, min(length, (b + 1) * block)) for b in kept]) if len(kept) else kept
    return kept if len(whole) == len(index) and np.array_equal(whole, index) else False


def _group(arch: "Architecture", tp: "TensorPlan") -> str:
    """The module transformers loads `tp` into: its own, or the fused experts' (`...mlp.experts`)."""
    claim = arch.match(tp.source.name)
    if claim is not None:
        role = claim[0]
        for placeholder in role.placeholders:
            if arch.placeholders.get(placeholder, placeholder) != "layers":
                depth = role.template.split("{" + placeholder + "}")[0].count(".")
                return ".".join(tp.out.name.split(".")[:depth])
    return tp.out.name.rsplit(".", 1)[0]


def plan_quantized(arch: "Architecture", ckpt: "Checkpoint", fmt: Fp8Blocks, tensors: list["TensorPlan"],
                   config: dict[str, Any]) -> tuple[list["TensorPlan"], dict[str, Any], list[str]]:
    """Scale tensors sliced by whole blocks, or weights dequantized: (tensors, new config, notes)."""
    from .plan import TensorPlan
    from .sink import OutTensor

    scaled = {id(tp): ckpt.tensors[tp.source.name + SCALE_SUFFIX] for tp in tensors if tp.source.name + SCALE_SUFFIX in ckpt.tensors}
    blocks: dict[int, list[Any]] = {}
    for tp in tensors:
        if id(tp) in scaled:
            if len(tp.source.shape) != 2:
                raise ArchitectureError(f"{tp.source.name}: block-quantized tensors must be 2-D, got shape {list(tp.source.shape)}")
            blocks[id(tp)] = [_blocks(i, n, b) for i, n, b in zip(tp.index, tp.source.shape, fmt.block)]
    bad = {_group(arch, tp) for tp in tensors if id(tp) in blocks and (fmt.force or tp.rescale is not None or any(b is False for b in blocks[id(tp)]))}
    out: list[TensorPlan] = []
    dequantized: list[str] = []
    for tp in tensors:
        if id(tp) not in scaled:
            out.append(tp)
        elif _group(arch, tp) in bad:
            nbytes = math.prod(tp.out.shape) * ITEMSIZE[fmt.out_dtype]
            out.append(replace(tp, out=OutTensor(tp.out.name, fmt.out_dtype, tp.out.shape, nbytes), dequant=Dequant(scaled[id(tp)], fmt.block)))
            dequantized.append(tp.out.name)
        else:
            scale = scaled[id(tp)]
            index = tuple(b if b is None else b.astype(np.int32) for b in blocks[id(tp)])
            shape = tuple(n if i is None else len(i) for n, i in zip(scale.shape, index))
            name = tp.out.name + SCALE_SUFFIX
            out += [tp, TensorPlan(scale, OutTensor(name, scale.dtype, shape, math.prod(shape) * ITEMSIZE[scale.dtype]), tp.role, index)]
    new_qc = dict(config["quantization_config"])
    kept_quantized = len(scaled) - len(dequantized)
    notes = []
    if dequantized:
        why = "--dequantize" if fmt.force else f"their cuts do not keep whole {fmt.block[0]}x{fmt.block[1]} blocks (or they are rescaled)"
        notes.append(f"{len(dequantized)} FP8 tensors are written as {fmt.out_dtype} ({why}), e.g. {dequantized[0]}"
                     + ("; no tensor stays FP8, quantization_config is dropped" if not kept_quantized else ""))
        modules = sorted({_group(arch, t) for t in out if t.dequant is not None})
        new_qc["modules_to_not_convert"] = list(new_qc.get("modules_to_not_convert") or []) + modules
    return out, (new_qc if kept_quantized else {}), notes


def load_scales(storage: "Storage", dequant: Dequant) -> np.ndarray:
    """A weight's whole scale tensor as float32 (one value per block: small)."""
    ref = dequant.scale
    blob = storage.open_blob(ref.file)
    try:
        raw = np.frombuffer(blob.read(ref.offset, ref.nbytes), dtype=raw_dtype(ref.dtype)).reshape(ref.shape)
        return to_float32(raw, ref.dtype).copy()
    finally:
        blob.close()


def dequantize_rows(raw: np.ndarray, dtype: str, lo: int, scales: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """float32 values of input rows lo.. (`raw`: their FP8 codes, all columns)."""
    rows = np.arange(lo, lo + raw.shape[0]) // block[0]
    cols = np.arange(raw.shape[1]) // block[1]
    return to_float32(raw, dtype) * scales[rows][:, cols]

