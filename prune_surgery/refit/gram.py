"""Input Gram matrices of the readers being refit, accumulated in float64 while a layer runs.

Each reader's sums run over every token and, separately, over a held-out part of the windows
(every ``VAL_EVERY``-th window, for the choice of lambda).  Readers that receive the same input
tensor (q/k/v, gate/up) and keep the same columns share one Gram.  Expert slices see only their
routed tokens and have no held-out part.  One-shot sums hold only the kept columns C[:, K] (the
kept units of the reader's input axis, read from the plan), so a reader that lost no input unit
has none.  Weights stored [in, out] (GPT-2's Conv1D, the slices of [experts, in, out] stacks,
applied as ``x @ W``) are marked, so their input axis is solved as axis -2.  In sequential mode
the dense model's inputs of the same tokens are captured first (:class:`InputCapture`) and the
pruned model's tap accumulates C_xy = sum x y^T beside C_yy.  The sums stay on the device the
layer runs on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..calibrate.readers import Reader
from ..calibrate.stats import LinearTap, same_input
from .solve import Grams

VAL_EVERY = 5
Key = tuple[str, int | None]  # a reader: (checkpoint tensor name, expert index or None)


def _window_split(n_rows: int, batch: int, start: int, device: torch.device) -> torch.Tensor:
    """True for rows of held-out windows (rows are batch x seq, window-major)."""
    per = n_rows // batch
    window = torch.arange(start, start + batch, device=device).repeat_interleave(per)
    return window % VAL_EVERY == VAL_EVERY - 1


def input_keep(reader: Reader, targets: dict[str, Any]) -> np.ndarray | None:
    """The kept columns of the input axis of `reader` (as seen: axis -2 when stored [in, out]),
    or None when none of its tensors lost units there."""
    for name in reader.names or (reader.name,):
        tp = targets.get(name)
        if tp is not None:
            kept = tp.index[-2] if reader.transposed else tp.index[-1]
            if kept is not None:
                return np.asarray(kept, dtype=np.int64)
    return None


class InputCapture(LinearTap):
    """Keeps the inputs of full-token readers for the micro-batch in flight, by checkpoint name."""

    def __init__(self, readers: dict[tuple[str, int | None], Reader], params: dict[int, str]) -> None:
        super().__init__(readers, params)
        self.inputs: dict[str, torch.Tensor] = {}

    def on_linear(self, reader: Reader, x: torch.Tensor, y: torch.Tensor) -> None:
        """Keep `x` (float64, tokens x n)."""
        if self.full(x):
            self.inputs[reader.name] = x.reshape(-1, x.shape[-1]).to(torch.float64)


class GramTap(LinearTap):
    """Accumulates the Grams of the refit readers of one layer, keyed by (tensor name, expert).

    `targets` (source tensor name -> its plan) says which readers are refit and, in one-shot sums,
    which input columns are kept."""

    def __init__(self, readers: dict[tuple[str, int | None], Reader], params: dict[int, str], targets: dict[str, Any],
                 dense: InputCapture | None = None, dense_name: dict[str, str] | None = None) -> None:
        super().__init__(readers, params)
        self.targets = targets
        self.dense = dense
        self.dense_name = dense_name or {}  # this model's tensor name -> the dense model's
        self.total: dict[Key, Grams] = {}
        self.val: dict[Key, Grams] = {}
        self.alias: dict[Key, Key] = {}  # reader -> the reader whose Gram it shares
        self.stored_in_out: set[Key] = set()  # readers applied as x @ W (stored [in, out])
        self.keeps: dict[Key, torch.Tensor | None] = {}
        self.start = 0
        self._seen: list[tuple[torch.Tensor, Key]] = []

    def begin(self, start: int, batch: int, seq: int) -> None:
        """Micro-batch of windows start..start+batch enters."""
        self.start_batch(batch, seq)
        self.start = start
        self._seen = []

    def on_linear(self, reader: Reader, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add this micro-batch's sums: C[:, K] (one-shot) or the dense-pruned cross sums."""
        key = (reader.name, reader.expert)
        if key in self.alias:
            return
        if reader.transposed:  # applied as x @ W: GPT-2's Conv1D, the slices of [experts, in, out] stacks
            self.stored_in_out.add(key)
        full = self.full(x) and reader.expert is None  # expert slices see their routed tokens only
        name = reader.name
        pair = self.dense.inputs.get(self.dense_name.get(name, name)) if self.dense is not None and full else None
        if key not in self.keeps:
            kept = input_keep(reader, self.targets)
            self.keeps[key] = None if kept is None else torch.from_numpy(kept).to(x.device)
        keep = self.keeps[key]
        if keep is None:  # no input unit lost: nothing to refit from this input
            return
        for seen, owner in self._seen:  # q/k/v (gate/up) read one tensor: one Gram serves them all
            if (same_input(x, [seen]) and owner not in self.alias and key not in self.total
                    and _same(keep, self.keeps.get(owner))):
                self.alias[key] = owner
                return
        self._seen.append((x, key))
        rows = x.reshape(-1, x.shape[-1]).to(torch.float64)
        _add(self.total, key, rows, pair, keep)
        if full:
            held = _window_split(rows.shape[0], self.batch_shape[0], self.start, rows.device)
            if bool(held.any()):
                _add(self.val, key, rows[held], None if pair is None else pair[held], keep)

    def grams(self, key: Key) -> tuple[Grams | None, Grams | None]:
        """(all tokens, held-out) sums of the reader (tensor name, expert), shared ones resolved."""
        owner = self.alias.get(key, key)
        return self.total.get(owner), self.val.get(owner)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None) == (b is None) and (a is None or torch.equal(a, b))  # type: ignore[arg-type]


def _add(target: dict[Key, Grams], key: Key, y: torch.Tensor, x: torch.Tensor | None, keep: torch.Tensor | None) -> None:
    """Add one micro-batch to `target[key]`: y is the reader's input, x the dense input beside it."""
    if x is None:  # one-shot: y = x[K], C_xy = C[:, K] and C_yy its rows K
        assert keep is not None, key
        xy, yy = y.T @ y[:, keep], None
    else:
        xy, yy = x.T @ y, y.T @ y
    if key in target:
        target[key].add(xy, yy, y.shape[0])
    else:
        target[key] = Grams(xy, yy, keep if x is None else None, y.shape[0])
