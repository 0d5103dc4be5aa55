"""Ridge least squares for the readers of pruned units, with lambda chosen on held-out tokens.

For a reader W (out x n) whose input x (dense model, n columns) is replaced by y (pruned model, the
kept n' columns), the refit is the ridge optimum

    W' = argmin sum_t ||W x_t - W' y_t||^2 + lambda ||W'||^2 = W C_xy (C_yy + lambda I)^-1,

with C_xy = sum x y^T and C_yy = sum y y^T accumulated in float64.  One-shot refit has y = x[K],
so C_xy = C[:, K] and C_yy = C[K, K] (the formula of the issue).  Lambda is relative to the mean
diagonal of C_yy and chosen on a held-out split of the calibration windows; the refit is only
kept when it lowers the held-out error below plain slicing (W[:, K]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SpecError

ALPHAS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_ALPHA = 1e-2  # used where no held-out split exists (expert slices see routed tokens only)


@dataclass
class Grams:
    """Sums over one split of the tokens: C_xy (n x n') and C_yy (n' x n'); x is None when y = x[K]."""

    yy: torch.Tensor
    xy: torch.Tensor | None = None
    tokens: int = 0

    def cross(self, keep: torch.Tensor) -> torch.Tensor:
        """C_xy: given, or C[:, K] of the one-shot Gram."""
        return self.xy if self.xy is not None else self.yy[:, keep]

    def kept(self, keep: torch.Tensor) -> torch.Tensor:
        """C_yy over the kept columns."""
        return self.yy if self.xy is not None else self.yy[keep][:, keep]


@dataclass
class Refit:
    """A solved reader: its new weight (rows already sliced) and what was chosen."""

    weight: torch.Tensor
    alpha: float | None  # None: plain slicing was better on held-out tokens
    val_gain: float  # held-out error removed, as a fraction of plain slicing's (one-shot; nan otherwise)


def _solve(b: torch.Tensor, a: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """b (a + lambda I)^-1 with lambda = alpha * mean(diag a); None if not positive definite."""
    scale = float(torch.diagonal(a).mean()) if a.numel() else 0.0
    if not scale > 0:
        return None
    chol, info = torch.linalg.cholesky_ex(a + alpha * scale * torch.eye(a.shape[0], dtype=a.dtype, device=a.device))
    if int(info) != 0:
        return None
    return torch.cholesky_solve(b.T, chol).T


def _error(w: torch.Tensor, new: torch.Tensor, val: Grams, keep: torch.Tensor) -> float:
    """Held-out sum ||W x - W' y||^2, less the constant ||W x||^2 term."""
    b = w @ val.cross(keep)
    return float(-2 * (new * b).sum() + ((new @ val.kept(keep)) * new).sum())


def refit_weight(weight: torch.Tensor, keep: torch.Tensor, train: Grams, val: Grams | None,
                 name: str, alpha: float | None = None) -> Refit:
    """Refit `weight` (out x n, float64) onto the kept input columns `keep`.

    With `val`, lambda is chosen from ALPHAS on it and the final solve uses train + val; without,
    `alpha` (or DEFAULT_ALPHA) is used.  Raises SpecError when no lambda gives a solvable system.
    """
    sliced = weight[:, keep]
    if val is None:
        chosen = alpha if alpha is not None else DEFAULT_ALPHA
        new = _solve(weight @ train.cross(keep), train.kept(keep), chosen)
        if new is None:
            raise SpecError(f"the input Gram of {name} is singular even with ridge (alpha {chosen}); calibrate on more text")
        return Refit(new, chosen, 0.0)
    base = _error(weight, sliced, val, keep)
    best: tuple[float, float, torch.Tensor] | None = None
    for a in ALPHAS:
        new = _solve(weight @ train.cross(keep), train.kept(keep), a)
        if new is not None:
            err = _error(weight, new, val, keep)
            if best is None or err < best[0]:
                best = (err, a, new)
    if best is None:
        raise SpecError(f"the input Gram of {name} is singular for every ridge lambda tried; calibrate on more text")
    total = Grams(train.yy + val.yy, None if train.xy is None else train.xy + val.xy, train.tokens + val.tokens)
    if best[0] >= base:
        return Refit(sliced, None, 0.0)
    final = _solve(weight @ total.cross(keep), total.kept(keep), best[1])
    assert final is not None  # train + val is at least as well conditioned as train
    gain = float("nan")
    if val.xy is None:  # one-shot: the constant ||W x||^2 is known, so the relative reduction is too
        constant = float(((weight @ val.yy) * weight).sum())
        gain = (base - best[0]) / max(constant + base, 1e-30)
    return Refit(final, best[1], gain)
