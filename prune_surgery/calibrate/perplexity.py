"""``eval``: held-out perplexity, streamed one decoder layer at a time.

exp(mean negative log-likelihood of every predicted token) over non-overlapping windows (see
:func:`data.eval_windows`).  Logits come from the model's own head a chunk of tokens at a time
(at most ``LOGIT_BYTES`` of float32 logits at once), so a 70B with a 128k vocabulary evaluates
within the memory of one layer.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .data import eval_windows
from .layerwise import LayerwiseModel
from .session import DEFAULT_SEQ_LEN, Progress, micro_batch, open_for_forward

LOGIT_BYTES = 64 << 20


def stream_nll(engine: LayerwiseModel, ids: torch.Tensor, micro: int, progress: Progress | None = None) -> tuple[float, int]:
    """(sum of NLL, predicted tokens) of windows `ids` [N, T] through `engine`."""
    n, length = ids.shape
    hidden = engine.embed(ids, micro)
    for index in range(engine.num_layers):
        engine.run_layer(index, hidden, micro)
        if progress:
            progress(f"eval layer {index + 1}/{engine.num_layers}", index + 1, engine.num_layers + 1, (index + 1) * n * length)
    total, count = head_nll(engine, [hidden], ids)[0], n * (length - 1)
    if progress:
        progress("eval", engine.num_layers + 1, engine.num_layers + 1, n * length)
    return total, count


def head_nll(engine: LayerwiseModel, finals: list[torch.Tensor], ids: torch.Tensor) -> list[float]:
    """Sum of NLL of every predicted token of `ids` [N, T], for each final stream in `finals`.

    The head's weights are loaded once for all streams; logits come a chunk of tokens at a time.
    """
    n, length = ids.shape
    vocab = getattr(engine.model.config.get_text_config(), "vocab_size", None) or 32000
    chunk = max(1, LOGIT_BYTES // (4 * int(vocab)))
    totals = [0.0] * len(finals)
    with engine.head() as logits_of:
        for i, hidden in enumerate(finals):
            for w in range(n):
                for t0 in range(0, length - 1, chunk):
                    t1 = min(length - 1, t0 + chunk)
                    logits = logits_of(hidden[w : w + 1, t0:t1])
                    target = ids[w, t0 + 1 : t1 + 1].to(logits.device)
                    totals[i] += float(torch.nn.functional.cross_entropy(logits[0], target, reduction="sum"))
    return totals


def evaluate(src: str | Path, data: Sequence[str | Path], *, seq_len: int = DEFAULT_SEQ_LEN, max_tokens: int | None = None,
             text_field: str = "text", device: str = "cpu", dtype: str | None = None, micro: int | None = None,
             revision: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Perplexity of `src` on `data`: {"perplexity", "nll", "tokens", "windows", "seq_len", ...}."""
    opened = open_for_forward(src, device=device, dtype=dtype, revision=revision)
    windows = eval_windows(opened.tokenizer, data, seq_len, max_tokens, text_field)
    ids = torch.from_numpy(windows.ids)
    engine = LayerwiseModel(opened.source, opened.dtype, device)
    clock = time.monotonic()
    total, count = stream_nll(engine, ids, micro_batch(ids.shape[1], micro), progress)
    nll = total / count
    return {
        "perplexity": math.exp(nll), "nll": nll, "tokens": count, "windows": int(ids.shape[0]),
        "seq_len": seq_len, "bos": windows.bos, "data_hash": windows.data_hash,
        "source": opened.source.record, "dtype": str(opened.dtype).removeprefix("torch."),
        "seconds": round(time.monotonic() - clock, 3),
    }
