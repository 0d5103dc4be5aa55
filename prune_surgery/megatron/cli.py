"""`prune-surgery megatron ...`: export to, import from, and reshard Megatron checkpoints.

The main CLI registers :data:`app` as the ``megatron`` sub-command; pruning a Megatron
checkpoint goes through ``prune-surgery run`` (which dispatches to :func:`prune_megatron`).
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Megatron-core checkpoints (per-rank torch files or torch_dist, any tensor-parallel size): export from "
    "Hugging Face, import back, change the TP size. Prune them with 'prune-surgery run ... --balance TP'.",
    no_args_is_help=True, add_completion=False,
)

Overwrite = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty")
Format = typer.Option("torch", "--format", help="torch (one file per TP rank) or torch_dist (Megatron-LM's default; "
                      "--tp then only sets the vocabulary padding and train_args.sh)")


@app.command("export")
def export_cmd(
    src: Path = typer.Argument(..., help="Hugging Face LLaMA checkpoint folder (safetensors + config.json)"),
    out: Path = typer.Argument(..., help="Megatron checkpoint folder to create"),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel size (must divide heads, kv heads and ffn size)"),
    spec: str = typer.Option("te", "--layer-spec", help="Key names: te (TransformerEngine, Megatron-LM's default) or local"),
    iteration: int = typer.Option(1, "--iteration", help="Iteration number of the checkpoint (iter_0000001)"),
    divisible_by: int = typer.Option(128, "--make-vocab-size-divisible-by", help="Megatron's vocabulary padding unit (x TP)"),
    fmt: str = Format,
    overwrite: bool = Overwrite,
) -> None:
    """Convert a Hugging Face LLaMA checkpoint into a Megatron checkpoint (TP rank files or torch_dist)."""
    from .export import export_hf

    export_hf(src, out, tp=tp, spec=spec, iteration=iteration, divisible_by=divisible_by, fmt=fmt, overwrite=overwrite)
    typer.echo(f"wrote Megatron checkpoint {out} ({fmt}, TP={tp}, layer spec {spec}); train with: pretrain_gpt.py $(cat {out}/train_args.sh)")


@app.command("import")
def import_cmd(
    src: Path = typer.Argument(..., help="Megatron checkpoint folder (or its iter_* folder)"),
    out: Path = typer.Argument(..., help="Hugging Face folder to create"),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="Unpadded vocabulary size (default: recorded at export, else the padded size)"),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Largest output shard, e.g. 5GB"),
    overwrite: bool = Overwrite,
) -> None:
    """Convert a Megatron checkpoint (mcore or older language_model layout) into Hugging Face safetensors."""
    from ..spec import parse_size
    from .importer import import_megatron

    import_megatron(src, out, vocab_size=vocab_size, max_shard_size=parse_size(max_shard_size), overwrite=overwrite)
    typer.echo(f"wrote Hugging Face checkpoint {out}")


@app.command("reshard")
def reshard_cmd(
    src: Path = typer.Argument(..., help="Megatron checkpoint folder"),
    out: Path = typer.Argument(..., help="Megatron checkpoint folder to create"),
    tp: int = typer.Option(..., "--tp", help="New tensor-parallel size"),
    spec: str | None = typer.Option(None, "--layer-spec", help="te or local (default: the source's)"),
    vocab_size: int | None = typer.Option(None, "--vocab-size", help="Unpadded vocabulary size (default: recorded at export)"),
    fmt: str | None = typer.Option(None, "--format", help="torch or torch_dist (default: the source's)"),
    overwrite: bool = Overwrite,
) -> None:
    """Change the tensor-parallel size or the format (torch <-> torch_dist) of a Megatron checkpoint."""
    from .reshard import reshard_megatron

    reshard_megatron(src, out, tp=tp, spec=spec, vocab_size=vocab_size, fmt=fmt, overwrite=overwrite)
    typer.echo(f"wrote Megatron checkpoint {out} (TP={tp})")
