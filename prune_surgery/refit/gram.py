"""Input Gram matrices of the readers being refit, accumulated in float64 while a layer runs.

Each reader's sums run over every token and, separately, over a held-out part of the windows
(every ``VAL_EVERY``-th window, for the choice of lambda).  Readers that receive the same
input tensor (q/k/v, gate/up) share one Gram.  Expert slices see only their routed tokens and
are not split.  One-shot Grams hold only the kept columns C[:, K] (`keeps`).  In sequential mode
the dense model's inputs of the same tokens are captured first (:class:`InputCapture`) and the
pruned model's tap accumulates C_xy = sum x y^T beside C_yy.  The sums stay on the device the
layer runs on.
"""

from __future__ import annotations

import torch

from ..calibrate.readers import Reader
from ..calibrate.stats import LinearTap, same_input
from .solve import Grams

VAL_EVERY = 5


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
        if self.full(x) and not reader.transposed:
            self.inputs[reader.name] = x.reshape(-1, x.shape[-1]).to(torch.float64)


class GramTap(LinearTap):
    """Accumulates the Grams of every reader of one layer, keyed by checkpoint tensor name."""

    def __init__(self, readers: dict[tuple[str, int | None], Reader], params: dict[int, str],
                 dense: InputCapture | None = None, dense_name: dict[str, str] | None = None,
                 keeps: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(readers, params)
        self.keeps = keeps or {}  # reader -> its kept input columns (one-shot)
        self.dense = dense
        self.dense_name = dense_name or {}  # this model's tensor name -> the dense model's
        self.total: dict[str, Grams] = {}
        self.val: dict[str, Grams] = {}
        self.alias: dict[str, str] = {}  # reader -> the reader whose Gram it shares
        self.start = 0
        self._seen: list[tuple[torch.Tensor, str]] = []

    def begin(self, start: int, batch: int, seq: int) -> None:
        """Micro-batch of windows start..start+batch enters."""
        self.start_batch(batch, seq)
        self.start = start
        self._seen = []

    def on_linear(self, reader: Reader, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add x x^T (or the dense-pruned cross sums) of this micro-batch."""
        name = reader.name
        if name in self.alias or reader.transposed:  # [in, out] weights (GPT-2 Conv1D) are not refit
            return
        full = self.full(x)
        pair = self.dense.inputs.get(self.dense_name.get(name, name)) if self.dense is not None and full else None
        for seen, owner in self._seen:  # q/k/v (gate/up) read one tensor: one Gram serves them all
            if same_input(x, [seen]) and owner not in self.alias and name not in self.total and self._same_keep(name, owner):
                self.alias[name] = owner
                return
        self._seen.append((x, name))
        rows = x.reshape(-1, x.shape[-1]).to(torch.float64)
        keep = self.keeps.get(name)
        if keep is None and pair is None:  # nothing to pair this input with: not refit
            return
        if keep is not None:
            keep = self.keeps[name] = keep.to(rows.device)
        self._add(self.total, name, rows, pair, keep)
        if full:
            held = _window_split(rows.shape[0], self.batch_shape[0], self.start, rows.device)
            if bool(held.any()):
                self._add(self.val, name, rows[held], None if pair is None else pair[held], keep)

    def _same_keep(self, name: str, owner: str) -> bool:
        a, b = self.keeps.get(name), self.keeps.get(owner)
        return (a is None) == (b is None) and (a is None or torch.equal(a.cpu(), b.cpu()))  # type: ignore[union-attr]

    @staticmethod
    def _add(target: dict[str, Grams], name: str, y: torch.Tensor, x: torch.Tensor | None,
             keep: torch.Tensor | None) -> None:
        if x is None:  # one-shot: y = x[K], C_xy = C[:, K] and C_yy its rows K
            assert keep is not None, name
            xy, yy = y.T @ y[:, keep], None
        else:
            xy, yy = x.T @ y, y.T @ y
        if name in target:
            target[name].add(xy, yy, y.shape[0])
        elif x is None:
            target[name] = Grams(xy, None, keep, y.shape[0])
        else:
            target[name] = Grams(xy, yy, None, y.shape[0])

    def grams(self, name: str) -> tuple[Grams | None, Grams | None]:
        """(all tokens, held-out) Grams of a reader (shared ones resolved)."""
        owner = self.alias.get(name, name)
        return self.total.get(owner), self.val.get(owner)
