"""``recover``: distill a pruned student from its teacher with the transformers Trainer.

Work files live in ``WORK`` (default ``OUT.work`` beside OUT): ``tokens/`` and ``heldout/`` (the
packed token files), ``checkpoints/`` (Trainer checkpoints with optimizer, scheduler and RNG
state; ``--resume`` continues from the newest) and ``initial_eval.json``.  OUT appears only at
the end, atomically.  Every check (pair, data, disk) runs before training starts; when one fails,
the work folder this call created is removed again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..calibrate.data import load_tokenizer
from ..errors import OutputError, SpecError
from .kd import VocabMap
from .output import check_out, write_output
from .pair import Pair, open_pair
from .settings import Settings
from .tokens import PackedDataset, TokenFile, build_token_file

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_work(out: Path) -> Path:
    """Where the work files of OUT go by default."""
    return out.with_name(out.name + ".work")


def _arguments(settings: Settings, work: Path, steps: int, heldout: bool) -> Any:
    from transformers import TrainingArguments

    save = settings.save_steps or max(1, steps // 10)
    evals = settings.eval_steps or max(1, steps // 10)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else steps // 50
    return TrainingArguments(
        output_dir=str(work / "checkpoints"), per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        max_steps=steps, learning_rate=settings.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": settings.min_lr}, warmup_steps=warmup, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, logging_steps=1, save_strategy="steps", save_steps=save,
        save_total_limit=2, eval_strategy="steps" if heldout else "no", eval_steps=evals, seed=settings.seed,
        data_seed=settings.seed, bf16=settings.bf16, use_cpu=not torch.cuda.is_available(), report_to="none",
        disable_tqdm=True, prediction_loss_only=True, dataloader_num_workers=0, save_only_model=False,
        include_num_input_tokens_seen="no")


def _student(pair: Pair, settings: Settings) -> Any:
    import transformers

    if settings.init == "random":
        config = transformers.AutoConfig.from_pretrained(str(pair.student))
        torch.manual_seed(settings.seed)
        return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return transformers.AutoModelForCausalLM.from_pretrained(str(pair.student), dtype=torch.float32)


def _teacher(pair: Pair, settings: Settings, device: torch.device) -> Any:
    import transformers

    if pair.teacher is None:
        return None
    dtype = settings.teacher_dtype or ("bfloat16" if device.type == "cuda" else "float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(pair.teacher), dtype=TORCH_DTYPES[dtype])
    model.to(settings.teacher_device or device).eval().requires_grad_(False)
    return model


def _disk_check(work: Path, out: Path, params: int) -> None:
    """Two checkpoints (weights + Adam, float32) and the final output must fit."""
    need = 2 * 12 * params + 4 * params
    root = next(p for p in (work, *work.parents) if p.exists())
    free = shutil.disk_usage(root).free
    if free < need:
        raise OutputError(f"no space for checkpoints: {need / 2**30:.2f} GiB needed under {root}, {free / 2**30:.2f} GiB free; "
                          "free some space or pass --work on a larger disk")


def _curves(history: list[dict[str, Any]], tokens_per_step: int, initial: dict[str, Any] | None) -> tuple[list, list]:
    train = [{"step": h["step"], "tokens": h["step"] * tokens_per_step, "loss": h["loss"],
              "lr": h.get("learning_rate")} for h in history if "loss" in h]
    held = [{"step": 0, "tokens": 0, "loss": initial["eval_loss"]}] if initial else []
    seen = {0} if initial else set()
    for h in history:
        if "eval_loss" in h and h["step"] not in seen:
            seen.add(h["step"])
            held.append({"step": h["step"], "tokens": h["step"] * tokens_per_step, "loss": h["eval_loss"]})
    return train, held


def _prepare(student: Path, data: Sequence[str | Path], heldout: Sequence[str | Path] | None,
             settings: Settings, teacher: str | None, work: Path, args: Any) -> tuple[Pair, Any, TokenFile, TokenFile | None]:
    pair = open_pair(student, teacher, settings.objective)
    tokenizer = load_tokenizer(student)
    with args.main_process_first(local=False):
        train = build_token_file(tokenizer, data, work / "tokens", settings.text_field)
        held = build_token_file(tokenizer, heldout, work / "heldout", settings.text_field) if heldout else None
    return pair, tokenizer, train, held


def recover(student: str | Path, out: str | Path, data: Sequence[str | Path], settings: Settings, *,
            teacher: str | None = None, heldout: Sequence[str | Path] | None = None, work: str | Path | None = None,
            resume: bool = False, overwrite: bool = False, callbacks: Sequence[Any] = (), progress: bool = True,
            command: str | None = None) -> dict[str, Any]:
    """Train STUDENT (distilling from its teacher) and write the recovered checkpoint to OUT.

    Returns the content of OUT/recovery.json.  Raises SpecError / CheckpointError / OutputError
    (nothing written) when the pair, the data or the disk do not fit.
    """
    from transformers.trainer_utils import get_last_checkpoint

    from .trainer import ProgressBar, RecoveryTrainer

    student, out = Path(student), Path(out)
    work = Path(work) if work else default_work(out)
    check_out(out, overwrite)
    created = not work.exists()
    if resume and created:
        raise SpecError(f"--resume: there is no work folder {work} to resume from; run without --resume first")
    clock = time.monotonic()
    try:
        world_args = _arguments(settings, work, 1, bool(heldout))
        steps = settings.total_steps(world_args.world_size)
        args = _arguments(settings, work, steps, bool(heldout))
        pair, tokenizer, train, held = _prepare(student, data, heldout, settings, teacher, work, args)
        global_batch = settings.global_batch(args.world_size)
        dataset = PackedDataset(train, settings.seq_len, steps * global_batch, settings.seed)
        if dataset.n < global_batch:
            raise SpecError(f"the data holds {dataset.n} windows of {settings.seq_len} tokens, too few for one batch of "
                            f"{global_batch}; give more text or a smaller --batch-size / --seq-len")
        evalset = PackedDataset(held, settings.seq_len, settings.eval_windows, shuffle=False) if held else None
        if evalset is not None:
            evalset.length = min(evalset.n, evalset.length)  # at most the windows there are
        model = _student(pair, settings)
        _disk_check(work, out, sum(p.numel() for p in model.parameters()))
    except BaseException:
        if created and args_is_main():
            shutil.rmtree(work, ignore_errors=True)
        raise
    vocab = VocabMap(torch.tensor(pair.kept) if pair.kept is not None else None, pair.n_real)
    teacher_model = _teacher(pair, settings, args.device)
    tokens_per_step = global_batch * settings.seq_len
    trainer = RecoveryTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=evalset, teacher=teacher_model,
                              vocab=vocab, objective=settings.objective, temperature=settings.temperature,
                              alpha=settings.alpha, callbacks=[*([ProgressBar(tokens_per_step)] if progress else []), *callbacks])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    last = get_last_checkpoint(str(work / "checkpoints")) if resume and (work / "checkpoints").exists() else None
    initial_path = work / "initial_eval.json"
    initial = None
    if evalset is not None:
        if last is None or not initial_path.exists():
            initial = trainer.evaluate()
            if trainer.is_world_process_zero():
                initial_path.write_text(json.dumps(initial) + "\n")
        else:
            initial = json.loads(initial_path.read_text())
    trainer.train(resume_from_checkpoint=last)
    if evalset is not None and not any("eval_loss" in h and h["step"] == steps for h in trainer.state.log_history):
        trainer.evaluate()
    loss, held_curve = _curves(trainer.state.log_history, tokens_per_step, initial)
    record = {
        "tool": "prune-surgery recover", "command": command, "student": str(student.resolve()),
        "teacher": pair.teacher_record, "objective": settings.objective, "init": settings.init,
        "data": {"files": train.meta["files"], "hash": train.meta["data_hash"], "tokens_available": train.meta["tokens"],
                 "windows": dataset.n},
        "heldout": held_curve, "heldout_data": {"files": held.meta["files"], "hash": held.meta["data_hash"],
                                                "windows": len(evalset)} if held and evalset else None,
        "tokens": steps * tokens_per_step, "steps": steps, "global_batch": global_batch, "world_size": args.world_size,
        "vocab": {"pruned": pair.kept is not None, "student_rows": int(pair.student_config["vocab_size"]),
                  "real_rows": pair.n_real},
        "settings": settings.to_json(), "loss": loss, "resumed_from": Path(last).name if last else None,
        "seconds": round(time.monotonic() - clock, 2),
    }
    if trainer.is_world_process_zero():
        dtype = pair.student_config.get("dtype") or pair.student_config.get("torch_dtype") or "float32"
        final = trainer.accelerator.unwrap_model(trainer.model).to(TORCH_DTYPES.get(dtype, torch.float32))
        write_output(final, tokenizer, student, out, record, overwrite)
    trainer.accelerator.wait_for_everyone()
    return record


def args_is_main() -> bool:
    """True on the main process (or without distributed training)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0
