"""The `push` command: upload an existing prune-surgery output to the Hub in one commit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .errors import PruneSurgeryError


def push(
    out: Annotated[Path, typer.Argument(help="Output folder of a finished `prune-surgery run`.")],
    repo: Annotated[str, typer.Argument(help="Target Hub repo id, e.g. me/model-pruned (created if needed).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private (an existing repo keeps its visibility).")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to commit to (created if needed); default main.")] = None,
    commit_message: Annotated[str | None, typer.Option("--commit-message", help="Message of the upload commit.")] = None,
) -> None:
    """Push OUT to the Hub repo REPO with a generated model card (token from HF_TOKEN or `hf auth login`)."""
    from .hub import push_folder

    def note(line: str) -> None:
        typer.echo(f"note: {line}", err=True)

    try:
        url = push_folder(out, repo, private=private, revision=revision, commit_message=commit_message, note=note)
    except PruneSurgeryError as err:
        typer.echo(f"error: {err.message}", err=True)
        raise typer.Exit(err.exit_code) from None
    typer.echo(url)


def register(app: typer.Typer) -> None:
    """Add the Hub commands (`push`) to the prune-surgery app."""
    app.command("push")(push)
