"""Human-readable output of `inspect` and `plan` (rich tables) and their JSON forms."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .plan import Plan


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan as a JSON-able dict (kept indices included)."""
    return {
        "family": plan.arch.family,
        "source": plan.source,
        "spec": plan.spec.to_json(),
        "sizes": {"before": plan.sizes, "after": plan.targets},
        "config_changes": plan.changes,
        "new_config": plan.new_config,
        "params": {"before": plan.params_before, "after": plan.params_after},
        "bytes": {"before": plan.bytes_before, "after": plan.bytes_after},
        "peak_memory_bytes": plan.peak_bytes,
        "refit_peak_memory_bytes": plan.refit_peak_bytes,
        "calibration": plan.calibration,
        "shards": [{"file": s.file, "bytes": s.nbytes, "tensors": len(s.tensors)} for s in plan.shards],
        "tensors": [{"name": t.out.name, "source": t.source.name, "shape": list(t.out.shape), "dtype": t.out.dtype} for t in plan.tensors],
        "dropped": plan.dropped,
        "warnings": plan.warnings,
        "plan_hash": plan.plan_hash,
        "keep": plan.keep,
    }


def print_plan(plan: Plan, console: Console) -> None:
    """Config changes, sizes, shards, memory and warnings as rich tables."""
    table = Table(title=f"{plan.arch.family}: configuration", show_lines=False)
    table.add_column("key")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key, (old, new) in plan.changes.items():
        table.add_row(key, str(old), str(new))
    table.add_row("parameters", human_count(plan.params_before), human_count(plan.params_after))
    table.add_row("bytes", human_bytes(plan.bytes_before), human_bytes(plan.bytes_after))
    console.print(table)
    shards = Table(title="output shards")
    shards.add_column("file")
    shards.add_column("tensors", justify="right")
    shards.add_column("size", justify="right")
    for s in plan.shards:
        shards.add_row(s.file, str(len(s.tensors)), human_bytes(s.nbytes))
    console.print(shards)
    share = plan.params_after / plan.params_before if plan.params_before else 1.0
    console.print(f"kept {share:.1%} of parameters; {len(plan.tensors)} tensors written, {len(plan.dropped)} dropped")
    console.print(f"peak working memory (beyond the interpreter): about {human_bytes(plan.peak_bytes)}")
    if plan.calibration:
        c = plan.calibration
        console.print(f"units ranked by activations on {c['windows']} windows x {c['seq_len']} tokens (data {str(c['data_hash'])[:12]})")
    if plan.refit_peak_bytes:
        console.print(f"least-squares refit ({plan.spec.refit}): peak memory about {human_bytes(plan.refit_peak_bytes)}")
    console.print(f"plan hash {plan.plan_hash}")
    for note in plan.warnings:
        console.print(f"[yellow]warning:[/yellow] {note}")


def print_inspect(info: dict[str, Any], console: Console) -> None:
    """A checkpoint summary as a rich table."""
    table = Table(title=f"{info['family']} ({info['model_type']})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for space, size in info["sizes"].items():
        table.add_row(space, str(size))
    table.add_row("parameters", f"{human_count(info['params'])} ({info['params']})")
    table.add_row("bytes", human_bytes(info["bytes"]))
    table.add_row("dtypes", ", ".join(f"{k}: {human_count(v)}" for k, v in info["dtypes"].items()))
    table.add_row("tensors", str(info["tensors"]))
    table.add_row("shards", f"{len(info['shards'])} ({', '.join(list(info['shards'])[:3])}{', ...' if len(info['shards']) > 3 else ''})")
    console.print(table)
