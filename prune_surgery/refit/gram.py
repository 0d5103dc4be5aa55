"""Input Gram matrices of the readers being refit, accumulated in float64 while a layer runs.

Each reader's full input is split by window into a training and a held-out part (every
``VAL_EVERY``-th window is held out, for the choice of lambda).  Readers that receive the same
input tensor (q/k/v, gate/up) share one Gram.  Expert slices see only their routed tokens and
are not split.  Weights stored [in, out] (GPT-2's Conv1D, the slices of [experts, in, out]
stacks, applied as ``x @ W``) are marked, so their input axis is solved as axis -2.  In sequential mode the dense model's inputs of the same tokens are captured
first (:class:`InputCapture`) and the pruned model's tap accumulates C_xy = sum x y^T beside C_yy.
"""

from __future__ import annotations

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
    """Accumulates the Grams of every reader of one layer, keyed by (tensor name, expert)."""

    def __init__(self, readers: dict[tuple[str, int | None], Reader], params: dict[int, str],
                 dense: InputCapture | None = None, dense_name: dict[str, str] | None = None) -> None:
        super().__init__(readers, params)
        self.dense = dense
        self.dense_name = dense_name or {}  # this model's tensor name -> the dense model's
        self.train: dict[Key, Grams] = {}
        self.val: dict[Key, Grams] = {}
        self.alias: dict[Key, Key] = {}  # reader -> the reader whose Gram it shares
        self.stored_in_out: set[Key] = set()  # readers applied as x @ W (stored [in, out])
        self.start = 0
        self._seen: list[tuple[torch.Tensor, Key]] = []

    def begin(self, start: int, batch: int, seq: int) -> None:
        """Micro-batch of windows start..start+batch enters."""
        self.start_batch(batch, seq)
        self.start = start
        self._seen = []

    def on_linear(self, reader: Reader, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add x x^T (or the dense-pruned cross sums) of this micro-batch."""
        key = (reader.name, reader.expert)
        if key in self.alias:
            return
        if reader.transposed:  # applied as x @ W: GPT-2's Conv1D, the slices of [experts, in, out] stacks
            self.stored_in_out.add(key)
        full = self.full(x) and reader.expert is None  # expert slices see their routed tokens only
        name = reader.name
        pair = self.dense.inputs.get(self.dense_name.get(name, name)) if self.dense is not None and full else None
        for seen, owner in self._seen:  # q/k/v (gate/up) read one tensor: one Gram serves them all
            if same_input(x, [seen]) and owner not in self.alias and key not in self.train:
                self.alias[key] = owner
                return
        self._seen.append((x, key))
        rows = x.reshape(-1, x.shape[-1]).to(torch.float64)
        if not full:
            self._add(self.train, key, rows, None)
            return
        held = _window_split(rows.shape[0], self.batch_shape[0], self.start, rows.device)
        for target, mask in ((self.train, ~held), (self.val, held)):
            if bool(mask.any()):
                self._add(target, key, rows[mask], None if pair is None else pair[mask])

    @staticmethod
    def _add(target: dict[Key, Grams], name: Key, y: torch.Tensor, x: torch.Tensor | None) -> None:
        yy = (y.T @ y).cpu()
        xy = None if x is None else (x.T @ y).cpu()
        if name not in target:
            target[name] = Grams(yy, xy, y.shape[0])
            return
        grams = target[name]
        grams.yy += yy
        if xy is not None and grams.xy is not None:
            grams.xy += xy
        grams.tokens += y.shape[0]

    def grams(self, key: Key) -> tuple[Grams | None, Grams | None]:
        """(train, held-out) Grams of the reader (tensor name, expert) (shared ones resolved)."""
        owner = self.alias.get(key, key)
        return self.train.get(owner), self.val.get(owner)
