"""The recovery objectives: forward KL from the teacher (vocabulary-aware), LM loss, and a mix.

Every loss is returned as a *sum* over the predicted positions together with their count, so a
caller can average over a whole global batch (micro-batches, processes) exactly.

When the student's vocabulary was pruned, ``kept[new] = old``: the teacher reads ``kept[ids]``
and its logits are restricted to the kept ids before the softmax (the teacher's distribution
renormalized over the tokens the student can say).  Rows the student's vocabulary was padded
with (``--pad-vocab-to-multiple-of``) are cut off the student's logits first, so they never
receive probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F




@dataclass(frozen=True)
class VocabMap:
    """How student ids map into the teacher's: ``kept`` (None: the same vocabulary) and the real row count."""

    kept: torch.Tensor | None  # int64 [n_real]: teacher id of each student id
    n_real: int  # student rows that are real tokens (the rest is padding)

    def teacher_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The teacher's ids of student `ids`."""
        return ids if self.kept is None else self.kept.to(ids.device)[ids]

    def teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits restricted to the student's tokens, in student order."""
        if self.kept is None:
            return logits[..., : self.n_real]
        return logits.index_select(-1, self.kept.to(logits.device))

    def student_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Student logits without its padded rows."""
        return logits[..., : self.n_real]


def kd_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0,
           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(sum over positions of T^2 * KL(p_teacher || p_student), positions) for logits [..., V] of equal V.

    p = softmax(logits / T); `mask` [...] (bool) selects the positions that count.
    """
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_position = (log_t.exp() * (log_t - log_s)).sum(-1) * temperature**2
    if mask is not None:
        per_position = per_position[mask]
    return per_position.sum(), int(per_position.numel())


def lm_sum(student: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(sum of next-token NLL, predicted tokens) for logits [B, T, V] and ids [B, T]."""
    logits, target = student[:, :-1].float(), ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    if mask is not None:
        nll = nll[mask[:, 1:].reshape(-1)]
    return nll.sum(), int(nll.numel())


def objective_mean(objective: str, student: torch.Tensor, ids: torch.Tensor, teacher: torch.Tensor | None,
                   vocab: VocabMap, temperature: float = 1.0, alpha: float = 0.5,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """The per-position mean of `objective` on one batch: kd, lm, or alpha*kd + (1-alpha)*lm."""
    student = vocab.student_logits(student)
    parts = []
    if objective in ("kd", "mix"):
        assert teacher is not None, "kd needs teacher logits"
        total, count = kd_sum(student, vocab.teacher_logits(teacher), temperature, mask)
        parts.append((alpha if objective == "mix" else 1.0) * total / max(count, 1))
    if objective in ("lm", "mix"):
        total, count = lm_sum(student, ids, mask)
        parts.append((1 - alpha if objective == "mix" else 1.0) * total / max(count, 1))
    return sum(parts)  # type: ignore[return-value]
