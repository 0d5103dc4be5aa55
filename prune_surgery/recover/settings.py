"""What a recovery run is asked to do, and how much it will cost before anything starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import SpecError
OBJECTIVES = ("kd", "lm", "mix")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Settings:
    """Hyperparameters of a recovery run (the defaults follow NVIDIA's Minitron / ModelOpt guidance)."""

    objective: str = "kd"  # kd: forward KL from the teacher; lm: next-token loss; mix: alpha*kd + (1-alpha)*lm
    temperature: float = 1.0
    alpha: float = 0.5
    steps: int | None = None  # optimizer steps (or give tokens)
    tokens: int | None = None  # training tokens; steps = ceil(tokens / (global batch x seq_len))
    seq_len: int = 512
    batch_size: int = 8  # windows per device and micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-5  # cosine decay to min_lr
    warmup_steps: int | None = None  # default: 2% of the steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_steps: int | None = None  # checkpoint every N steps (default: 10 checkpoints per run)
    eval_steps: int | None = None  # held-out eval every N steps (default: 10 evals per run)
    eval_windows: int = 64  # held-out windows per evaluation
    seed: int = 0
    bf16: bool = False  # bf16 autocast for the student (weights and optimizer stay float32)
    teacher_dtype: str | None = None  # default: bfloat16 on cuda, float32 on cpu
    teacher_device: str | None = None  # default: the student's device
    init: str = "pruned"  # pruned, or random: the same shape re-initialized (the baseline of the claim)
    text_field: str = "text"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise SpecError(f"--objective {self.objective} is unknown; use one of {', '.join(OBJECTIVES)}")
        if self.init not in ("pruned", "random"):
            raise SpecError(f"--init {self.init} is unknown; use pruned or random")
        if (self.steps is None) == (self.tokens is None):
            raise SpecError("give exactly one of --steps N or --tokens N")
        for name in ("seq_len", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise SpecError(f"--{name.replace('_', '-')} must be at least 1")
        if (self.steps or 1) < 1 or (self.tokens or 1) < 1:
            raise SpecError("--steps / --tokens must be at least 1")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise SpecError("--temperature must be > 0 and --alpha within [0, 1]")
        if self.teacher_dtype not in (None, *DTYPE_BYTES):
            raise SpecError(f"--teacher-dtype {self.teacher_dtype} is unknown; use float32, bfloat16 or float16")

    def global_batch(self, world: int) -> int:
        """Windows per optimizer step over all processes."""
        return self.batch_size * self.grad_accum * world

    def total_steps(self, world: int) -> int:
        """Optimizer steps of the run."""
        if self.steps is not None:
            return self.steps
        return math.ceil(self.tokens / (self.global_batch(world) * self.seq_len))  # type: ignore[operator]

    def to_json(self) -> dict[str, Any]:
        """The settings as plain values."""
        return asdict(self)


def _layers(config: dict[str, Any]) -> tuple[int, int, int, int]:
    return (int(config["num_hidden_layers"]), int(config["hidden_size"]), int(config.get("intermediate_size", 0)),
            int(config["vocab_size"]))


def memory_estimate(student: dict[str, Any], student_params: int, teacher: dict[str, Any] | None, teacher_params: int,
                    settings: Settings, teacher_dtype: str) -> dict[str, int]:
    """Peak bytes on one device of student training + frozen teacher, by part (no activation checkpointing).

    Student: float32 weights, gradients and two Adam moments (16 bytes/param); activations per
    layer about 34*s*b*h bytes in 16-bit (Korthikanti et al., with SDPA / flash attention, which
    stores no s x s scores), twice that in float32;
    logits, their log-softmax and gradient in float32.  Teacher: weights in `teacher_dtype`; under
    no_grad only one layer's activations live at a time; its logits and log-softmax in float32.
    """
    s, b = settings.seq_len, settings.batch_size
    layers, hidden, _, vocab = _layers(student)
    act_bytes = 2 if settings.bf16 else 4
    out = {
        "student_weights_grads_adam": 16 * student_params,
        "student_activations": layers * 34 * s * b * hidden * act_bytes // 2,
        "student_logits": 3 * 4 * s * b * vocab,
        "teacher_weights": 0, "teacher_activations": 0, "teacher_logits": 0,
    }
    if teacher is not None:
        _, t_hidden, t_ffn, t_vocab = _layers(teacher)
        out["teacher_weights"] = DTYPE_BYTES[teacher_dtype] * teacher_params
        out["teacher_activations"] = (4 * s * b * t_hidden + 2 * s * b * t_ffn) * DTYPE_BYTES[teacher_dtype]
        out["teacher_logits"] = 2 * 4 * s * b * t_vocab
    out["total"] = sum(out.values())
    return out
