"""The transformers Trainer that distills: a frozen teacher beside it, our objectives, our data order.

Everything distributed (DDP, FSDP2, DeepSpeed, several nodes) is the Trainer's and accelerate's:
``accelerate launch -m prune_surgery recover ...`` runs it on every process.  What we add:

- ``compute_loss``: the per-position mean of the objective on the micro-batch.  All windows are
  full, so every micro-batch on every process predicts the same number of positions; the Trainer
  divides by the accumulation steps and DDP averages over processes, which is then exactly the
  mean over the global batch.  In evaluation the loss is always the student's LM loss.
- a sequential sampler: item ``i`` of :class:`~.tokens.PackedDataset` already is a seeded
  permutation of the windows, so global batch ``k`` is fixed and a resumed run (which skips the
  batches it already saw) reads exactly the uninterrupted run's batches.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .kd import VocabMap, objective_mean


class RecoveryTrainer(Trainer):
    """Trainer with a frozen teacher and the kd / lm / mix objectives."""

    def __init__(self, *args: Any, teacher: torch.nn.Module | None, vocab: VocabMap, objective: str,
                 temperature: float = 1.0, alpha: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher, self.vocab, self.objective = teacher, vocab, objective
        self.temperature, self.alpha = temperature, alpha
        self.loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer divides by the accumulation steps

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    def teacher_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's logits for student ids (mapped to the teacher's vocabulary)."""
        assert self.teacher is not None
        device = next(self.teacher.parameters()).device
        with torch.no_grad():
            return self.teacher(input_ids=self.vocab.teacher_ids(ids.to(device))).logits.to(ids.device)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        ids = inputs["input_ids"]
        outputs = model(input_ids=ids)
        if model.training:
            teacher = self.teacher_logits(ids) if self.objective != "lm" else None
            loss = objective_mean(self.objective, outputs.logits, ids, teacher, self.vocab, self.temperature, self.alpha)
        else:
            loss = objective_mean("lm", outputs.logits, ids, None, self.vocab)
        return (loss, outputs) if return_outputs else loss


class ProgressBar(TrainerCallback):
    """A rich progress bar on the main process: steps, loss, tokens/s and ETA (silent off a terminal)."""

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]recover"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task("recover", total=state.max_steps, completed=state.global_step, info="")
        self.start, self.first, self.loss = time.monotonic(), state.global_step, float("nan")
        self.bar.start()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is None:
            return
        rate = (state.global_step - self.first) * self.tokens_per_step / max(time.monotonic() - self.start, 1e-9)
        self.bar.update(self.task, completed=state.global_step, info=f"loss {self.loss:.3f}  {rate:,.0f} tok/s")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
