"""Safetensors dtypes: item sizes, raw-byte views and the few float conversions we need.

Tensor bytes are moved as unsigned integers of the same width, so slicing never changes a
bit.  Arithmetic (norm rescaling, magnitude scores) goes through float32 explicitly.
"""

from __future__ import annotations

import numpy as np

from .errors import CheckpointError

#: safetensors dtype name -> item size in bytes
ITEMSIZE: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}

_RAW = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64}


def itemsize(dtype: str) -> int:
    """Bytes per element of a safetensors dtype; raise CheckpointError for unknown ones."""
    try:
        return ITEMSIZE[dtype]
    except KeyError:
        raise CheckpointError(
            f"unknown safetensors dtype {dtype!r}; supported: {', '.join(ITEMSIZE)} "
            "(sub-byte types such as F4 are not supported)"
        ) from None


def raw_dtype(dtype: str) -> np.dtype:
    """The unsigned integer numpy dtype used to move elements of `dtype` bit for bit."""
    return np.dtype(_RAW[itemsize(dtype)])


def _f8_table(exp_bits: int, man_bits: int, bias: int, fn: bool) -> np.ndarray:
    codes = np.arange(256, dtype=np.int64)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    normal = (1.0 + man / (1 << man_bits)) * np.exp2(exp - bias)
    subnormal = (man / (1 << man_bits)) * np.exp2(1 - bias)
    values = sign * np.where(exp == 0, subnormal, normal)
    top = (1 << exp_bits) - 1
    if fn:  # e4m3fn: only S.1111.111 is NaN, no infinities
        values[(exp == top) & (man == (1 << man_bits) - 1)] = np.nan
    else:  # IEEE-like e5m2
        values[(exp == top) & (man == 0)] = sign[(exp == top) & (man == 0)] * np.inf
        values[(exp == top) & (man != 0)] = np.nan
    return values.astype(np.float32)


_F8 = {"F8_E4M3": _f8_table(4, 3, 7, True), "F8_E5M2": _f8_table(5, 2, 15, False)}


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Decode raw elements (as produced by :func:`raw_dtype`) to float32 values."""
    if dtype == "BF16":
        wide = raw.astype(np.uint32)
        wide <<= 16  # in place: one temporary per block (the stream rescales whole embeddings)
        return wide.view(np.float32)
    if dtype in _FLOATS:
        return raw.view(_FLOATS[dtype]).astype(np.float32)
    if dtype in _F8:
        return _F8[dtype][raw]
    if dtype == "F8_E8M0":
        return np.exp2(raw.astype(np.float32) - 127.0)
    raise CheckpointError(f"dtype {dtype} holds no floating-point weights to score or rescale")


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """Encode float32 values as raw elements of `dtype`, rounding to nearest even."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "BF16":
        bits = values.view(np.uint32)
        rounded = bits >> 16  # (bits + ((bits >> 16) & 1) + 0x7FFF) >> 16, in place (one temporary)
        rounded &= 1
        rounded += 0x7FFF
        rounded += bits
        rounded >>= 16
        nan = np.isnan(values)
        rounded[nan] = (bits[nan] >> 16) | 0x40
        return rounded.astype(np.uint16)
    if dtype in _FLOATS:
        return values.astype(_FLOATS[dtype]).view(raw_dtype(dtype))
    raise CheckpointError(
        f"cannot rescale a norm weight stored as {dtype}; rerun with --no-norm-rescale"
    )
