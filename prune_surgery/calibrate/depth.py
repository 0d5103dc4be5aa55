"""Depth by perplexity: drop, one at a time, the layer whose removal hurts a calibration split least.

Greedy (as in the layer-pruning literature): each step runs every candidate removal at once, one
decoder layer resident: layer l is loaded once per step and advances the stream of every
candidate c < l (the model without c) and the full stream; candidate l starts as the stream
entering l.  The streams of all candidates are resident (candidates x windows x tokens x hidden),
so the split is kept small (a few windows).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .data import calibration_windows
from .layerwise import LayerwiseModel
from .perplexity import head_nll
from .session import Progress, micro_batch, open_for_forward

SPLIT_SAMPLES = 4


def _advance(engine: LayerwiseModel, index: int, hidden: torch.Tensor, micro: int) -> torch.Tensor:
    out = hidden.clone()
    for start in range(0, out.shape[0], micro):
        out[start : start + micro] = engine.forward(index, out[start : start + micro], start)
    return out


def greedy_ppl_drop(src: str | Path, data: Sequence[str | Path], drop: int, *, samples: int = SPLIT_SAMPLES,
                    seq_len: int = 256, device: str = "cpu", dtype: str | None = None, revision: str | None = None,
                    progress: Progress | None = None) -> list[int]:
    """The `drop` layers whose greedy removal keeps the calibration perplexity lowest (sorted).

    Uses the first `samples` calibration windows (all candidates' streams are resident).
    """
    opened = open_for_forward(src, device=device, dtype=dtype, revision=revision)
    ids = torch.from_numpy(calibration_windows(opened.tokenizer, data, samples, seq_len).ids)
    engine = LayerwiseModel(opened.source, opened.dtype, device)
    micro = micro_batch(ids.shape[1], None)
    kept = list(range(engine.num_layers))
    dropped: list[int] = []
    for step in range(drop):
        hidden = engine.embed(ids, micro)
        streams: dict[int, torch.Tensor] = {}
        for index in kept:
            with engine.resident(index):
                for c in streams:
                    streams[c] = _advance(engine, index, streams[c], micro)
                streams[index] = hidden
                hidden = _advance(engine, index, hidden, micro)
        candidates = sorted(streams)
        nll = head_nll(engine, [streams[c] for c in candidates], ids)
        best = candidates[min(range(len(candidates)), key=lambda i: (nll[i], candidates[i]))]
        kept.remove(best)
        dropped.append(best)
        if progress:
            progress(f"depth step {step + 1}/{drop}", step + 1, drop, 0)
    return sorted(dropped)
