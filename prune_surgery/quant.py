"""Block-quantized checkpoints: FP8 with per-block scales (DeepSeek-V3, GLM-4.5-FP8) and MXFP4 (gpt-oss).

MXFP4 (`quant_method: mxfp4`): `X_blocks` (..., rows, cols/32, 16) bytes, two e2m1 codes each
(low nibble first), and `X_scales` (..., rows, cols/32) E8M0 exponents; a table describes
`X_blocks` by the values it holds (..., rows, cols), so a cut that keeps whole 32-blocks of
cols slices bytes and scales, and any other cut writes `X` dequantized and transposed to
(..., cols, rows), the layout transformers saves.  The rest below holds for both formats.

A quantized weight `X.weight` (F8_E4M3) comes with `X.weight_scale_inv` (F32, one value per
`weight_block_size` block, the last block of an axis possibly partial); the value is
`fp8 * scale`.  After the plan has sliced every weight by element indices, this module
decides, per weight:

- every pruned axis keeps whole blocks (experts, layers, o_proj's 128-wide MLA heads...): the
  FP8 bytes are sliced as usual and the scale tensor is sliced by the kept blocks, so the
  format is kept bit for bit;
- a weight that hidden pruning rescales (what writes the residual stream: o_proj, down
  projections, times sqrt(d'/d)) keeps its FP8 codes and has its scales rescaled instead;
- any other cut (or `--dequantize`, or an MXFP4 weight that must be rescaled): the weight is
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
_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
#: MXFP4 e2m1 codes (a nibble each, low nibble first), as in transformers' integrations/mxfp4.py
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


@dataclass(frozen=True)
class Dequant:
    """How to dequantize one weight while streaming it: its scale tensor and block shape.

    `packed` (MXFP4): the weight is (..., rows, cols/32, 16) bytes of two FP4 codes with
    E8M0 scales (..., rows, cols/32), written transposed (..., cols, rows) as transformers holds it."""

    scale: "TensorRef"
    block: tuple[int, ...]
    packed: bool = False


@dataclass(frozen=True)
class BlockFormat:
    """A checkpoint's block quantization (from config.quantization_config)."""

    label: str  # FP8, MXFP4
    weight_suffix: str  # "" (X.weight + X.weight_scale_inv) or "_blocks" (X_blocks + X_scales)
    scale_suffix: str
    block: tuple[int, ...]  # elements per block on the trailing logical axes
    out_dtype: str  # what dequantized weights are written as
    force: bool  # --dequantize

    @property
    def packed(self) -> bool:
        """MXFP4: two 4-bit codes per byte, 16 bytes per block of 32."""
        return self.label == "MXFP4"

    def is_scale(self, name: str, ckpt: "Checkpoint") -> bool:
        """True for a scale tensor whose weight is in the checkpoint (planned with the weight)."""
        return name.endswith(self.scale_suffix) and name[: -len(self.scale_suffix)] + self.weight_suffix in ckpt.tensors

    def scale_of(self, name: str, ckpt: "Checkpoint") -> "TensorRef | None":
        """The scale tensor of a quantized weight, or None for a weight that is not quantized."""
        if not name.endswith(self.weight_suffix):
            return None
        return ckpt.tensors.get(name[: len(name) - len(self.weight_suffix)] + self.scale_suffix)


def quant_format(config: dict[str, Any], dequantize: bool) -> BlockFormat | None:
    """The checkpoint's quantization, None if it has none; raise for a format we do not know."""
    qc = config.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    block = qc.get("weight_block_size") if isinstance(qc, dict) else None
    dtype = _DTYPES.get(str(config.get("dtype") or config.get("torch_dtype") or "bfloat16"), "BF16")
    if method == "mxfp4":
        return BlockFormat("MXFP4", "_blocks", "_scales", (32,), dtype, dequantize)
    if method != "fp8" or not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise ArchitectureError(
            f"quantization_config with quant_method {method!r} (weight_block_size {block!r}) is not supported; "
            "supported: fp8 with a two-number weight_block_size, mxfp4; dequantize the checkpoint first"
        )
    return BlockFormat("FP8", "", SCALE_SUFFIX, (block[0], block[1]), dtype, dequantize)


def logical_shape(ref: "TensorRef", fmt: BlockFormat | None) -> tuple[int, ...]:
    """The shape a table describes: MXFP4 (..., cols/32, 16) bytes are (..., cols) values."""
    if fmt is None or not fmt.packed or not ref.name.endswith(fmt.weight_suffix) or len(ref.shape) < 2:
        return ref.shape
    return (*ref.shape[:-2], ref.shape[-2] * ref.shape[-1] * 2)


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


def plan_quantized(arch: "Architecture", ckpt: "Checkpoint", fmt: BlockFormat, tensors: list["TensorPlan"],
                   config: dict[str, Any]) -> tuple[list["TensorPlan"], dict[str, Any], list[str]]:
    """Scale tensors sliced by whole blocks, or weights dequantized: (tensors, new config, notes)."""
    scaled = {id(tp): ref for tp in tensors if (ref := fmt.scale_of(tp.source.name, ckpt)) is not None}
    blocks: dict[int, list[Any]] = {}
    for tp in tensors:
        if id(tp) in scaled:
            shape = logical_shape(tp.source, fmt)
            per_axis = (1,) * (len(shape) - len(fmt.block)) + fmt.block
            if len(shape) < len(fmt.block):
                raise ArchitectureError(f"{tp.source.name}: a {fmt.label} tensor needs {len(fmt.block)} axes, got shape {list(tp.source.shape)}")
            blocks[id(tp)] = [_blocks(i, n, b) for i, n, b in zip(tp.index, shape, per_axis)]
    # FP8 values are code * scale: a rescaled weight keeps its codes and rescales its scales
    # (float32); MXFP4's power-of-two scales cannot carry an arbitrary factor (hidden pruning's c)
    rescaled = {_group(arch, tp) for tp in tensors if id(tp) in blocks and fmt.packed and tp.rescale is not None}
    cut = {_group(arch, tp) for tp in tensors if id(tp) in blocks and (fmt.force or any(b is False for b in blocks[id(tp)]))}
    bad = rescaled | cut
    out: list[TensorPlan] = []
    dequantized: list[str] = []
    for tp in tensors:
        if id(tp) not in scaled:
            out.append(tp)
        elif _group(arch, tp) in bad:
            out.append(_dequantized_plan(tp, fmt, scaled[id(tp)]))
            dequantized.append(out[-1].out.name)
        else:
            out += _block_sliced(tp, fmt, scaled[id(tp)], blocks[id(tp)])
    new_qc = dict(config["quantization_config"])
    kept_quantized = len(scaled) - len(dequantized)
    notes = []
    if dequantized:
        size = "x".join(str(b) for b in fmt.block)
        why = "--dequantize" if fmt.force else (
            f"their cuts do not keep whole {size} blocks" if cut else
            "hidden pruning multiplies what writes the residual stream by sqrt(d'/d), which power-of-two scales cannot carry")
        notes.append(f"{len(dequantized)} {fmt.label} tensors are written as {fmt.out_dtype} ({why}), e.g. {dequantized[0]}"
                     + (f"; no tensor stays {fmt.label}, quantization_config is dropped" if not kept_quantized else ""))
        modules = sorted({_group(arch, t) for t in out if t.dequant is not None})
        new_qc["modules_to_not_convert"] = list(new_qc.get("modules_to_not_convert") or []) + modules
    return out, (new_qc if kept_quantized else {}), notes


def _dequantized_plan(tp: "TensorPlan", fmt: BlockFormat, scale: "TensorRef") -> "TensorPlan":
    """`tp` written dequantized: the model's dtype; MXFP4 under its unpacked name, transposed."""
    from .sink import OutTensor

    name, shape = tp.out.name, tp.out.shape
    if fmt.packed:
        logical = tuple(n if i is None else len(i) for n, i in zip(logical_shape(tp.source, fmt), tp.index))
        name, shape = name[: -len(fmt.weight_suffix)], (*logical[:-2], logical[-1], logical[-2])
    out = OutTensor(name, fmt.out_dtype, shape, math.prod(shape) * ITEMSIZE[fmt.out_dtype])
    return replace(tp, out=out, dequant=Dequant(scale, fmt.block, fmt.packed))


def _block_sliced(tp: "TensorPlan", fmt: BlockFormat, scale: "TensorRef", blocks: list[Any]) -> list["TensorPlan"]:
    """`tp` kept quantized, and its scale tensor sliced by the kept blocks."""
    from .plan import TensorPlan
    from .sink import OutTensor

    kept = tuple(b if b is None else b.astype(np.int32) for b in blocks)
    if fmt.packed:  # kept values -> kept (block, byte) cells of the packed bytes
        index = (*tp.index[:-1], kept[-1], None)
        shape = tuple(n if i is None else len(i) for n, i in zip(tp.source.shape, index))
        tp = replace(tp, index=index, out=OutTensor(tp.out.name, tp.out.dtype, shape, math.prod(shape) * ITEMSIZE[tp.out.dtype]))
        kept = (*tp.index[:-2], kept[-1])
    shape = tuple(n if i is None else len(i) for n, i in zip(scale.shape, kept))
    name = tp.out.name[: len(tp.out.name) - len(fmt.weight_suffix)] + fmt.scale_suffix
    out = OutTensor(name, scale.dtype, shape, math.prod(shape) * ITEMSIZE[scale.dtype])
    return [replace(tp, rescale=None, rescale_offset=0.0), TensorPlan(scale, out, tp.role, kept, tp.rescale)]


def load_scales(storage: "Storage", dequant: Dequant) -> np.ndarray:
    """A weight's whole scale tensor as float32 (one value per block: small)."""
    ref = dequant.scale
    blob = storage.open_blob(ref.file)
    try:
        raw = np.frombuffer(blob.read(ref.offset, ref.nbytes), dtype=raw_dtype(ref.dtype)).reshape(ref.shape)
        return raw.copy() if dequant.packed else to_float32(raw, ref.dtype).copy()  # MXFP4: E8M0 exponent bytes
    finally:
        blob.close()


def dequantize_packed(raw: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 values (..., rows, cols) of MXFP4 bytes (..., rows, cols/32, 16) and E8M0 scales."""
    values = np.empty((*raw.shape[:-1], 32), np.float32)
    values[..., 0::2], values[..., 1::2] = FP4_VALUES[raw & 0x0F], FP4_VALUES[raw >> 4]
    values *= np.exp2(scales.astype(np.float32) - 127.0)[..., None]
    return values.reshape(*raw.shape[:-2], raw.shape[-2] * 32)


def dequantize_rows(raw: np.ndarray, dtype: str, lo: int, scales: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """float32 values of input rows lo.. (`raw`: their FP8 codes, all columns)."""
    rows = np.arange(lo, lo + raw.shape[0]) // block[0]
    cols = np.arange(raw.shape[1]) // block[1]
    return to_float32(raw, dtype) * scales[rows][:, cols]

