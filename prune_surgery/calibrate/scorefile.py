"""The scores file: raw activation statistics per space, and the unit scores derived from them.

A safetensors file (written and read with the official library, numpy only: `plan` and `run`
never import torch to use one).  Tensors are named ``{space}/{scope}/{stat}``: scope is the
original layer (``"3"``), ``"3.5"`` for (layer, expert), ``all`` for model-wide records; stats
are float64 sums (see :mod:`stats`).  ``layers/all/influence`` and ``layers/all/tokens`` give
block influence per layer, ``layers/all/angular`` [L+1, L+1] the mean angular distance between
the streams entering layers i and j (j = L: the final stream).  The metadata holds the
provenance as JSON (source, config hash, data hash, windows, tokens, tool version).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError
from ..spec import dump_json

FORMAT = "prune-surgery-scores/1"
AGGREGATIONS = ("minitron", "mean_abs", "rms")


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a config.json's canonical JSON: scores only apply to the model they came from."""
    return hashlib.sha256(dump_json(config).encode()).hexdigest()


def save_scores(path: Path, tables: dict[str, np.ndarray], provenance: dict[str, Any]) -> None:
    """Write the scores file atomically (temporary file renamed into place)."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tables.items()}, str(tmp),
              metadata={"format": FORMAT, "provenance": json.dumps(provenance, sort_keys=True)})
    tmp.replace(path)


class Scores:
    """Statistics of one scores file, and the unit scores that selection ranks by."""

    def __init__(self, tables: dict[str, np.ndarray], provenance: dict[str, Any], path: Path | None = None) -> None:
        self.tables = tables
        self.provenance = provenance
        self.path = path

    def stat(self, space: str, scope: str, name: str) -> np.ndarray | None:
        """One raw statistic, or None if the file has none."""
        return self.tables.get(f"{space}/{scope}/{name}")

    def scopes(self, space: str) -> list[str]:
        """Scopes recorded for a space."""
        found = {k.split("/")[1] for k in self.tables if k.split("/")[0] == space}
        return sorted(found, key=lambda s: [int(x) if x.isdigit() else x for x in s.split(".")])

    def spaces(self) -> set[str]:
        """Spaces with any statistic."""
        return {k.split("/")[0] for k in self.tables}

    def unit(self, space: str, scope: str, aggregation: str = "minitron") -> np.ndarray | None:
        """Importance of every unit of `space` in `scope` (higher: keep), or None if not recorded.

        ``minitron``: L2 over windows of the per-window mean |x| (Minitron's best); ``mean_abs``:
        mean |x| over tokens; ``rms``: root mean square.  Experts: the routing weight they received.
        """
        if aggregation not in AGGREGATIONS:
            raise SpecError(f"unknown score aggregation {aggregation!r}; use one of {', '.join(AGGREGATIONS)}")
        route = self.stat(space, scope, "route_weight")
        if route is not None:
            return route
        tokens = self.stat(space, scope, "tokens")
        if tokens is None:
            return None
        n = max(float(np.nan_to_num(tokens.sum(), nan=1.0)), 1.0)
        name = {"minitron": "win_sq", "mean_abs": "abs", "rms": "sq"}[aggregation]
        value = self.stat(space, scope, name)
        if value is None:
            raise SpecError(f"scores {self.path} lack {space}/{scope}/{name}; the file is damaged, recalibrate")
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if aggregation == "minitron":
                return np.sqrt(value)
            return value / n if aggregation == "mean_abs" else np.sqrt(value / n)

    def layer_influence(self) -> np.ndarray | None:
        """Mean block influence 1 - cos(h_in, h_out) of every layer, or None."""
        total, tokens = self.stat("layers", "all", "influence"), self.stat("layers", "all", "tokens")
        return None if total is None or tokens is None else total / np.maximum(tokens, 1)

    def angular(self) -> np.ndarray | None:
        """Mean angular distance between the streams entering layers i and j ([L+1, L+1])."""
        return self.stat("layers", "all", "angular")


def load_scores(path: Path) -> Scores:
    """Read a scores file; a file that is not one gives a one-line error."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"scores file {path} does not exist; make one with 'prune-surgery calibrate SRC --data FILE -o {path}'")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
        tables = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpecError(f"{path} is not a readable scores file ({str(exc).splitlines()[0]}); recalibrate") from None
    if metadata.get("format") != FORMAT:
        raise SpecError(f"{path} is not a prune-surgery scores file (format {metadata.get('format')!r}); make it with 'prune-surgery calibrate'")
    try:
        provenance = json.loads(metadata.get("provenance", "{}"))
    except ValueError:
        raise SpecError(f"{path}: its provenance record is not valid JSON; recalibrate") from None
    if not isinstance(provenance, dict):
        raise SpecError(f"{path}: its provenance record is not an object; recalibrate")
    return Scores(tables, provenance, path)


def check_scores(scores: Scores, config: dict[str, Any], needed: set[str]) -> None:
    """Refuse scores of another model, or scores lacking a space the target prunes."""
    if scores.provenance.get("config_hash") != config_hash(config):
        raise SpecError(f"scores {scores.path} were computed on another model (config hash differs: "
                        f"{scores.provenance.get('source', {}).get('path') or 'unknown source'}); calibrate this model")
    lacking = sorted(s for s in needed if s not in scores.spaces())
    if lacking:
        raise SpecError(f"scores {scores.path} hold no statistics for {', '.join(lacking)}, which the target prunes; "
                        "recalibrate with a current prune-surgery")


def ranking(scores: Scores, arch: Any, sizes: dict[str, int], aggregation: str = "minitron") -> Any:
    """The score function selection ranks by: (space, scope key) -> importance of every unit.

    Global spaces (hidden) sum their per-layer scores over layers.  A space read by no tensor
    (kv groups) takes the sum of the spaces nested in it (its query heads).  A scope with no
    record (the experts of a dense layer) scores zero.
    """
    inner = {s.within: name for name, s in arch.spaces.items() if s.within}

    def score(space: str, key: str) -> np.ndarray:
        found = _score(space, key)
        if found.shape != (sizes[space],) or not np.issubdtype(found.dtype, np.number):
            raise SpecError(f"scores {scores.path} hold {list(found.shape)} values for {space} (scope {key or 'all'}) but the "
                            f"model has {sizes[space]}; the file is damaged or from another model, recalibrate")
        return np.nan_to_num(found.astype(np.float64), nan=-np.inf)

    def _score(space: str, key: str) -> np.ndarray:
        if not arch.spaces[space].per:
            parts = [scores.unit(space, scope, aggregation) for scope in scores.scopes(space)]
            parts = [p for p in parts if p is not None]
            if parts:
                if len({p.shape for p in parts}) > 1:
                    raise SpecError(f"scores {scores.path}: the layers disagree on the size of {space}; recalibrate")
                return np.sum(parts, axis=0)
        else:
            found = scores.unit(space, key, aggregation)
            if found is not None:
                return found
        if space in inner:
            nested = score(inner[space], key)
            return nested.reshape(sizes[space], -1).sum(axis=1)  # (nested was checked: it divides)
        return np.zeros(sizes[space])

    return score


def needed_spaces(arch: Any, sizes: dict[str, int], targets: dict[str, int]) -> set[str]:
    """Spaces a target prunes that activation statistics must cover (kv groups come from heads)."""
    needed = {s for s in arch.spaces if s not in ("layers", "vocab") and targets[s] != sizes[s]}
    for name, space in arch.spaces.items():
        if space.within in needed:
            needed.discard(space.within)
            needed.add(name)
    return needed
