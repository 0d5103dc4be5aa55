"""`prune-surgery megatron ...`: export to, import from, and reshard Megatron checkpoints.

The main CLI registers :data:`app` as the ``megatron`` sub-command; pruning a Megatron
checkpoint goes through ``prune-surgery run`` (which dispatches to :func:`prune_megatron`).
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Megatron-core checkpoints (per-rank torch files, any tensor-parallel size): export from "
    "Hugging Face, import back, change the TP size. Prune them with 'prune-surgery run ... --balance TP'.",
    no_args_is_help=True, add_completion=False,
)

Overwrite = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty")


@app.command("export")
def export_cmd(
    src: Path = typer.Argument(..., help="Hugging Face LLaMA checkpoint folder (safetensors + config.json)"),
    out: Path = typer.Argument(..., help="Megatron checkpoint folder to create"),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel size (must divide heads, kv heads and ffn size)"),
    spec: str = typer.Option("te", "--layer-spec", help="Key names: te (TransformerEngine, Megatron-LM's default) or local"),
    iteration: int = typer.Option(1, "--iteration", help="Iteration number of the checkpoint (iter_0000001)"),
    divisible_by: int = typer.Option(128, "--make-vocab-size-divisible-by", help="Megatron's vocabulary padding unit (x TP)"),
    overwrite: bool = Overwrite,
) -> None:
    """Convert a Hugging Face LLaMA checkpoint into a Megatron checkpoint with TP ranks."""
    from .export import export_hf

    export_hf(src, out, tp=tp, spec=spec, iteration=iteration, divisible_by=divisible_by, overwrite=overwrite)
    typer.echo(f"wrote Megatron checkpoint {out} (TP={tp}, layer spec {spec})")


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
    overwrite: bool = Overwrite,
) -> None:
    """Change the tensor-parallel size of a Megatron checkpoint."""
    from .reshard import reshard_megatron

    reshard_megatron(src, out, tp=tp, spec=spec, vocab_size=vocab_size, overwrite=overwrite)
    typer.echo(f"wrote Megatron checkpoint {out} (TP={tp})")
