"""Ridge least squares for the readers of pruned units, with lambda chosen on held-out tokens.

For a reader W (out x n) whose input x (dense model, n columns) is replaced by y (pruned model, the
kept n' columns), the refit is the ridge optimum

    W' = argmin sum_t ||W x_t - W' y_t||^2 + lambda ||W'||^2 = W C_xy (C_yy + lambda I)^-1,

with C_xy = sum x y^T and C_yy = sum y y^T accumulated in float64.  One-shot refit has y = x[K],
so C_xy = C[:, K] and C_yy = C[K, K] (the formula of the issue); only those n x n' columns are
ever held.  The sums run over all calibration tokens and, separately, over a held-out split of
the windows.  Lambda is relative to the mean diagonal of C_yy; it is chosen by fitting on the
rest (total - held-out) and measuring on the held-out split, on at most ``PROBE_ROWS`` evenly
spaced output rows of W (the error is a sum over rows), scanning lambda down from the largest
until the held-out error rises (each step is one Cholesky factorization of an n' x n' matrix).  The refit is only kept when it lowers
the held-out error below plain slicing; the final solve uses every token.

Memory of one solve: one n' x n' matrix (the Cholesky factor is computed in place), the
right-hand side and the result (out x n' each), beside the Grams; nothing is solved twice at once,
and the held-out sums are freed before the final solves.
All of it stays on the Grams' device (the GPU with ``--device cuda``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SpecError

ALPHAS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6)  # tried from the largest; the scan stops once the error rises
DEFAULT_ALPHA = 1e-2  # used where no held-out split exists (expert slices see routed tokens only)
PROBE_ROWS = 2048  # output rows of W on which lambda is chosen (all rows of smaller readers)
_CHUNK = 4096  # rows of an n' x n' sum added at a time (no full-size temporary)


@dataclass
class Grams:
    """Sums over some tokens: C_xy (n x n') and C_yy (n' x n').

    In one-shot mode y = x[K]: `yy` is None, `keep` holds K and C_yy is the rows K of C_xy.
    """

    xy: torch.Tensor
    yy: torch.Tensor | None = None
    keep: torch.Tensor | None = None
    tokens: int = 0

    def kept_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of C_yy."""
        if self.yy is not None:
            return self.yy[start:stop]
        assert self.keep is not None
        return self.xy[self.keep[start:stop]]

    def add(self, xy: torch.Tensor, yy: torch.Tensor | None, tokens: int) -> None:
        """Accumulate one micro-batch's sums in place."""
        self.xy += xy
        if yy is not None and self.yy is not None:
            self.yy += yy
        self.tokens += tokens


@dataclass
class Refit:
    """A solved reader: its new weight (rows already sliced) and what was chosen."""

    weight: torch.Tensor
    alpha: float | None  # None: plain slicing was better on held-out tokens


def _kept_sum(parts: list[tuple[Grams, float]]) -> torch.Tensor:
    """A fresh sum of sign * C_yy over `parts`, built a chunk of rows at a time."""
    k = parts[0][0].xy.shape[1]
    out = torch.zeros((k, k), dtype=parts[0][0].xy.dtype, device=parts[0][0].xy.device)
    for start in range(0, k, _CHUNK):
        stop = min(k, start + _CHUNK)
        for grams, sign in parts:
            out[start:stop].add_(grams.kept_rows(start, stop), alpha=sign)
    return out


def _solve(b: torch.Tensor, parts: list[tuple[Grams, float]], alpha: float) -> torch.Tensor | None:
    """b (C_yy + lambda I)^-1 with lambda = alpha * mean(diag C_yy); None if not positive definite."""
    a = _kept_sum(parts)
    scale = float(torch.diagonal(a).mean()) if a.numel() else 0.0
    if not scale > 0:
        return None
    a.diagonal().add_(alpha * scale)
    info = torch.empty((), dtype=torch.int32, device=a.device)
    torch.linalg.cholesky_ex(a, out=(a, info))  # in place: one n' x n' matrix
    if int(info) != 0:
        return None
    return torch.cholesky_solve(b.T, a).T


def _error(new: torch.Tensor, b_val: torch.Tensor, val: Grams) -> float:
    """Held-out sum ||W x - W' y||^2 over the probed rows, less the constant ||W x||^2 term."""
    if val.yy is not None:
        quad = new @ val.yy
    else:  # new C[K, K] as (new C[K, :])[:, K]: no n' x n' copy
        assert val.keep is not None
        quad = (new @ val.xy.T)[:, val.keep]
    return float(-2 * (new * b_val).sum() + (quad * new).sum())


def choose_alpha(weight: torch.Tensor, keep: torch.Tensor, total: Grams, val: Grams, name: str) -> float | None:
    """Lambda (relative) with the lowest held-out error for `weight` (out x n) fit on total - val.

    None when no lambda beats plain slicing ``weight[:, keep]`` on the held-out split.  Only
    ``PROBE_ROWS`` evenly spaced output rows are solved for.  Raises SpecError when no lambda
    gives a solvable system.
    """
    rows = torch.linspace(0, weight.shape[0] - 1, min(weight.shape[0], PROBE_ROWS), device=weight.device).round().long()
    probe = weight[rows].to(torch.float64)
    b_val = probe @ val.xy
    b_train = probe @ total.xy - b_val
    base = _error(probe[:, keep.to(weight.device)], b_val, val)
    best: tuple[float, float] | None = None
    for a in ALPHAS:
        new = _solve(b_train, [(total, 1.0), (val, -1.0)], a)
        if new is None:  # a smaller lambda conditions the system worse still
            break
        err = _error(new, b_val, val)
        del new
        if best is not None and err >= best[0]:
            break  # past the minimum of the held-out error (it falls, then rises, as lambda shrinks)
        best = (err, a)
    if best is None:
        raise SpecError(f"the input Gram of {name} is singular for every ridge lambda tried; calibrate on more text")
    return best[1] if best[0] < base else None


def solve_refit(weight: torch.Tensor, total: Grams, alpha: float, name: str) -> torch.Tensor:
    """W C_xy (C_yy + lambda I)^-1 over all calibration tokens (float64, out x n')."""
    w = weight.to(torch.float64)
    b = w @ total.xy
    del w
    new = _solve(b, [(total, 1.0)], alpha)
    if new is None:
        raise SpecError(f"the input Gram of {name} is singular even with ridge (alpha {alpha}); calibrate on more text")
    return new
