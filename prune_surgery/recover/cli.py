"""``prune-surgery recover STUDENT OUT --data FILE...``: distill the pruned model from its source.

Runs on one CPU or under ``accelerate launch -m prune_surgery recover ...`` (DDP, FSDP2,
DeepSpeed: the Trainer's engines).  ``--dry-run`` prints the plan (teacher, steps, tokens, peak
memory of teacher + student) and writes nothing; ``--engine megatron --dry-run`` prints the
Megatron-LM command for continued training instead.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console


def recover(student: Path = typer.Argument(..., help="The pruned checkpoint folder (from 'prune-surgery run')"),
            out: Path = typer.Argument(..., help="Output folder for the recovered checkpoint (created atomically)"),
            data: List[Path] = typer.Option(..., "--data", help="Training text: plain, JSONL or gzip of either. Repeatable."),
            teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher folder or Hub repo (default: the source in STUDENT/prune_surgery.json)"),
            heldout: Optional[List[Path]] = typer.Option(None, "--heldout", help="Held-out text: LM loss curve beside the training loss"),
            objective: str = typer.Option("kd", "--objective", help="kd (forward KL from the teacher), lm, or mix"),
            tokens: Optional[int] = typer.Option(None, "--tokens", help="Training tokens (or --steps)"),
            steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (or --tokens)"),
            seq_len: int = typer.Option(512, "--seq-len", help="Tokens per window"),
            batch_size: int = typer.Option(8, "--batch-size", help="Windows per device and micro-batch"),
            grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step"),
            lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (cosine decay to --min-lr)"),
            min_lr: float = typer.Option(1e-5, "--min-lr", help="Final learning rate"),
            warmup: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warmup steps (default 2% of the steps)"),
            temperature: float = typer.Option(1.0, "--temperature", help="KD temperature (the loss is scaled by T^2)"),
            alpha: float = typer.Option(0.5, "--alpha", help="--objective mix: alpha*kd + (1-alpha)*lm"),
            save_steps: Optional[int] = typer.Option(None, "--save-steps", help="Checkpoint every N steps (default: 10 per run)"),
            eval_steps: Optional[int] = typer.Option(None, "--eval-steps", help="Held-out eval every N steps (default: 10 per run)"),
            eval_windows: int = typer.Option(64, "--eval-windows", help="Held-out windows per evaluation"),
            seed: int = typer.Option(0, "--seed", help="Seed of the data order and of --init random"),
            bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast for the student (weights and Adam stay float32)"),
            teacher_dtype: Optional[str] = typer.Option(None, "--teacher-dtype", help="float32 / bfloat16 (default: bfloat16 on cuda, float32 on cpu)"),
            teacher_device: Optional[str] = typer.Option(None, "--teacher-device", help="Device of the teacher, e.g. cuda:1 (default: the student's)"),
            init: str = typer.Option("pruned", "--init", help="pruned, or random: the same shape re-initialized (a baseline)"),
            text_field: str = typer.Option("text", "--text-field", help="JSONL field holding the text"),
            work: Optional[Path] = typer.Option(None, "--work", help="Token files and checkpoints (default: OUT.work)"),
            resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in the work folder"),
            overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists and is not empty"),
            dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (steps, tokens, peak memory) and write nothing"),
            engine: str = typer.Option("transformers", "--engine", help="transformers, or megatron (with --dry-run: the Megatron-LM command)"),
            push_to: Optional[str] = typer.Option(None, "--push-to", help="After success, upload OUT to this Hub repo (one commit)"),
            private: bool = typer.Option(False, "--private", help="Create the --push-to repo as private"),
            quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display"),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output")) -> None:
    """Distill the pruned STUDENT from its source (vocabulary-aware KD) into a stock HF checkpoint OUT."""
    from .settings import Settings

    settings = Settings(objective=objective, temperature=temperature, alpha=alpha, steps=steps, tokens=tokens,
                        seq_len=seq_len, batch_size=batch_size, grad_accum=grad_accum, lr=lr, min_lr=min_lr,
                        warmup_steps=warmup, save_steps=save_steps, eval_steps=eval_steps, eval_windows=eval_windows,
                        seed=seed, bf16=bf16, teacher_dtype=teacher_dtype, teacher_device=teacher_device, init=init,
                        text_field=text_field)
    console = Console()
    if engine not in ("transformers", "megatron"):
        from ..errors import SpecError

        raise SpecError(f"--engine {engine} is unknown; use transformers or megatron")
    if dry_run:
        from .dryrun import dry_run as plan, render

        result = plan(student, out, data, settings, teacher=teacher, engine=engine)
        typer.echo(json.dumps(result, indent=1)) if as_json else render(result, console)
        return
    if engine == "megatron":
        from ..errors import SpecError

        raise SpecError("--engine megatron only prints the Megatron-LM command; add --dry-run and run that command")
    from .run import recover as run

    record = run(student, out, data, settings, teacher=teacher, heldout=heldout, work=work, resume=resume,
                 overwrite=overwrite, progress=not (quiet or as_json), command="prune-surgery " + shlex.join(sys.argv[1:]))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in record.items() if k not in ("loss",)}, indent=1))
    elif not quiet:
        last = record["loss"][-1]["loss"] if record["loss"] else float("nan")
        held = f", held-out LM loss {record['heldout'][0]['loss']:.3f} -> {record['heldout'][-1]['loss']:.3f}" if record["heldout"] else ""
        console.print(f"trained {record['steps']} steps ({record['tokens']:,} tokens, {record['objective']}): "
                      f"loss {record['loss'][0]['loss']:.3f} -> {last:.3f}{held}; wrote {out}")
    if push_to:
        from ..hub import push_folder

        url = push_folder(out, push_to, private=private,
                          note=lambda line: Console(stderr=True).print(f"note: {line}", highlight=False))
        console.print(f"pushed {out} to {url}")


def register(app: typer.Typer) -> None:
    """Add the `recover` verb to the main app."""
    app.command("recover")(recover)
