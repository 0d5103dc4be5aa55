"""What calibration and evaluation share: opening a source for a streamed forward.

torch, transformers and accelerate are optional extras; a missing one, or ``--device cuda``
without CUDA, is a one-line error before anything is read.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..api import Source, open_source
from ..errors import ArchitectureError, SpecError
from ..quant import quant_format
from ..spec import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN  # noqa: F401  (re-exported for the verbs)

MICRO_TOKENS = 4096  # tokens per micro-batch: the temporaries of one forward stay small

#: called as progress(stage, done, total, tokens) while layers run
Progress = Callable[[str, int, int, int], None]


def require_torch() -> None:
    """Refuse cleanly when the calibration extra is not installed."""
    missing = [m for m in ("torch", "transformers", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise SpecError(f"{', '.join(missing)} not installed: activation calibration and eval run stock transformers "
                        "modules; install the extra with  pip install 'prune-surgery[calibrate]'")


@dataclass
class Opened:
    """A source ready for a streamed forward."""

    source: Source
    root: Path
    tokenizer: Any
    dtype: Any
    device: str


def open_for_forward(src: str | Path, *, device: str = "cpu", dtype: str | None = None,
                     revision: str | None = None) -> Opened:
    """Open `src`, check the device and load its tokenizer."""
    require_torch()
    import torch

    from .data import load_tokenizer

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SpecError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError("--device cuda was asked but torch sees no CUDA device; use --device cpu")
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    chosen = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if chosen not in names:
        raise SpecError(f"--dtype must be one of float32, bfloat16, float16; got {chosen!r}")
    source = open_source(src, revision=revision)
    if source.local_root is None:
        raise SpecError("calibration and eval read a local copy of the checkpoint; drop --stream")
    quantized = quant_format(source.checkpoint.config, False)
    if quantized is not None:
        raise ArchitectureError(f"{src} holds {quantized.label}-quantized weights, which calibration, eval and refit do not "
                                f"run; write a dequantized copy first ('prune-surgery run {src} DENSE --dequantize') and use it")
    return Opened(source, Path(source.local_root), load_tokenizer(Path(source.local_root)), names[chosen], device)


def micro_batch(seq_len: int, micro: int | None) -> int:
    """Windows per micro-batch (default: about MICRO_TOKENS tokens)."""
    return max(1, micro if micro else MICRO_TOKENS // max(seq_len, 1))
