"""Repair without training: least-squares refit of the tensors that read pruned units.

``run --refit [oneshot|sequential] --calibration FILE`` streams the output as usual, then, one
layer at a time, replaces the values of every tensor whose input axis lost units by the ridge
optimum on calibration activations (see :mod:`solve`).  :mod:`memory` (numpy only) gives the
plan its peak; the rest needs torch and transformers (the ``calibrate`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..spec import PruneSpec


def refit_folder(plan: Any, source: Any, out: Path, spec: PruneSpec, device: str | None = None) -> dict[str, Any]:
    """Refit the output folder `out` of `plan` in place; returns what prune_surgery.json records."""
    from ..calibrate.data import calibration_windows
    from ..calibrate.session import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, micro_batch, open_for_forward
    from .engine import refit_output

    assert spec.refit and spec.calibration
    device = device or "cpu"
    opened = open_for_forward(source.record["path"] or source.local_root, device=device)
    windows = calibration_windows(opened.tokenizer, spec.calibration, spec.calibration_samples or DEFAULT_SAMPLES,
                                  spec.calibration_seq_len or DEFAULT_SEQ_LEN)
    import torch

    ids = torch.from_numpy(windows.ids)
    record = refit_output(plan, source, Path(out), ids, mode=spec.refit, dtype=opened.dtype, device=device,
                          micro=micro_batch(ids.shape[1], None))
    record["data_hash"] = windows.data_hash
    record["data"] = list(windows.files)
    return record
