"""Shared steps of the end-to-end activation tests: calibrate a tiny model, cut it with `run
--method activation --scores` on the command line, and the top-k rule the kept units must follow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from clitools import cli

from models import keep_of
from prune_surgery.calibrate.calibration import calibrate
from prune_surgery.calibrate.scorefile import Scores, load_scores


def top(score: np.ndarray, k: int) -> list[int]:
    """The k highest-scoring units, ties to the lower index, in ascending order (the ranking's rule)."""
    return sorted(np.argsort(-score, kind="stable")[:k].tolist())


def calibrated_cut(src: Path, text: Path, out: Path, cut: dict[str, int]) -> tuple[Scores, dict[str, Any]]:
    """Calibrate `src` on 8 x 24 tokens of `text`, run the cut (CLI option -> size) into `out`;
    the scores and the output's keep record."""
    scores_path = out.with_name(out.name + ".scores.safetensors")
    calibrate(src, [text], scores_path, samples=8, seq_len=24)
    flags = [a for k, v in cut.items() for a in (f"--{k}", str(v))]
    result = cli("run", str(src), str(out), *flags, "--method", "activation", "--scores", str(scores_path))
    assert result.returncode == 0, result.stderr
    return load_scores(scores_path), keep_of(out)
