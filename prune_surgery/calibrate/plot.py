"""PNG pictures of a scores file (matplotlib, an optional extra).

- ``{space}.png``: a heatmap, one row per layer (per layer and expert for per-expert spaces), one
  column per unit, colour = log10 of the Minitron importance normalized per row; with kept
  indices, dropped units are hatched out in white.
- ``layers.png``: block influence per layer (bars; dropped layers in grey when known) and the
  angular distance between layer l and l+n (heatmap) for ranking contiguous blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError
from .scorefile import Scores


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecError("matplotlib is not installed; install it with  pip install 'prune-surgery[plot]'") from None
    return plt


def _kept_mask(keep: dict[str, Any] | None, space: str, scope: str, units: int) -> np.ndarray | None:
    if not keep or space not in keep:
        return None
    value = keep[space]
    chosen = value if isinstance(value, list) else value.get(scope)
    if chosen is None:
        return None
    mask = np.zeros(units, dtype=bool)
    mask[np.asarray(chosen, dtype=int)] = True
    return mask


def plot_scores(scores: Scores, folder: Path, keep: dict[str, Any] | None = None) -> list[Path]:
    """Write the pictures into `folder`; returns the files written."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for space in sorted(scores.spaces() - {"layers"}):
        scopes = scores.scopes(space)
        rows = [scores.unit(space, s) for s in scopes]
        pairs = [(s, r) for s, r in zip(scopes, rows) if r is not None and r.size]
        if not pairs:
            continue
        width = max(r.size for _, r in pairs)
        grid = np.full((len(pairs), width), np.nan)
        dropped = np.zeros_like(grid, dtype=bool)
        for i, (scope, row) in enumerate(pairs):
            grid[i, : row.size] = np.log10(np.maximum(row / max(row.max(), 1e-30), 1e-6))
            mask = _kept_mask(keep, space, "" if space == "hidden" else scope, row.size)
            if mask is not None:
                dropped[i, : row.size] = ~mask
        fig, ax = plt.subplots(figsize=(min(16, 4 + width / 40), min(12, 2 + len(pairs) / 4)))
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis")
        if dropped.any():
            ax.imshow(np.where(dropped, 1.0, np.nan), aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1, alpha=0.85)
        ax.set_xlabel(f"{space} unit")
        ax.set_ylabel("layer" if "." not in pairs[0][0] else "layer.expert")
        ticks = range(0, len(pairs), max(1, len(pairs) // 16))
        ax.set_yticks(list(ticks), [pairs[i][0] for i in ticks])
        ax.set_title(f"{space}: log10 importance (Minitron), per row" + ("; dropped units white" if dropped.any() else ""))
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        path = folder / f"{space}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    influence, angular = scores.layer_influence(), scores.angular()
    if influence is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        colours = ["tab:blue"] * len(influence)
        if keep and "layers" in keep:
            colours = ["tab:blue" if i in set(keep["layers"]) else "lightgrey" for i in range(len(influence))]
        left.bar(range(len(influence)), influence, color=colours)
        left.set_xlabel("layer")
        left.set_ylabel("block influence 1 - cos(h_in, h_out)")
        left.set_title("block influence" + (" (grey: dropped)" if keep and "layers" in keep else ""))
        if angular is not None:
            image = right.imshow(angular, cmap="magma", interpolation="nearest")
            right.set_xlabel("stream entering layer j")
            right.set_ylabel("stream entering layer i")
            right.set_title("angular distance (last token), mean over windows")
            fig.colorbar(image, ax=right)
        fig.tight_layout()
        path = folder / "layers.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
