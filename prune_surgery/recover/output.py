"""The recovered checkpoint: a stock Hugging Face folder, written atomically, with its record and picture."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import OutputError

RECORD = "recovery.json"
PICTURE = "recovery_loss.png"


def check_out(out: Path, overwrite: bool) -> None:
    """OUT must be new (or empty), unless --overwrite."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputError(f"{out} exists and is not empty; pass --overwrite or choose another OUT")


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path, title: str, ylabel: str = "loss") -> Path | None:
    """A PNG of loss curves (tokens on x); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".part")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_output(model: Any, tokenizer: Any, student: Path, out: Path, record: dict[str, Any], overwrite: bool) -> Path:
    """Save model + tokenizer + prune_surgery.json (copied) + recovery.json + loss PNG into OUT, atomically."""
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if (student / "prune_surgery.json").exists():
        shutil.copy2(student / "prune_surgery.json", staging / "prune_surgery.json")
    (staging / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    curves = {"train": [(p["tokens"], p["loss"]) for p in record["loss"]],
              "held-out (LM)": [(p["tokens"], p["loss"]) for p in record["heldout"]]}
    plot_curves(curves, staging / PICTURE, f"recovery of {student.name} ({record['settings']['objective']})")
    if out.exists():
        check_out(out, overwrite)
        shutil.rmtree(out)
    os.replace(staging, out)
    return out
