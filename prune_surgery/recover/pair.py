"""Student and teacher: find the teacher, check that the two belong together, map the vocabulary.

The teacher defaults to the source recorded in the student's ``prune_surgery.json`` (a local
folder, or a Hub repo at the recorded commit).  They must share the model type, the tokenizer
(up to the vocabulary cut recorded under ``keep.vocab``), and the teacher's config must hold the
"before" value of every change the record lists; otherwise it is another model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, SpecError


@dataclass(frozen=True)
class Pair:
    """The student folder, the teacher folder (None: no teacher), their configs and the vocabulary map."""

    student: Path
    teacher: Path | None
    teacher_record: dict[str, Any] | None  # where the teacher came from
    student_config: dict[str, Any]
    teacher_config: dict[str, Any] | None
    record: dict[str, Any] | None  # the student's prune_surgery.json
    kept: list[int] | None  # student id -> teacher id (None: same vocabulary)
    n_real: int  # real rows of the student's vocabulary


def _config(folder: Path, what: str) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        raise CheckpointError(f"{what} {folder} has no config.json; give a Hugging Face checkpoint folder")
    return json.loads(path.read_text())


def student_record(student: Path) -> dict[str, Any] | None:
    """The student's prune_surgery.json, if any."""
    path = student / "prune_surgery.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fetch(repo_id: str, revision: str | None) -> Path:
    """A Hub teacher, downloaded into the Hub cache like any `run` source (Hub errors are one line)."""
    from ..api import open_source

    root = open_source(repo_id, revision=revision).local_root
    assert root is not None
    return root


def resolve_teacher(student: Path, teacher: str | None, record: dict[str, Any] | None) -> tuple[Path, dict[str, Any]]:
    """The teacher folder and where it came from: `teacher` if given, else the recorded source."""
    if teacher is None:
        source = (record or {}).get("source")
        if not source:
            raise SpecError(f"{student} has no prune_surgery.json naming its source; pass --teacher SRC "
                            "(or --objective lm to train without a teacher)")
        if source.get("path") and Path(source["path"]).exists():
            return Path(source["path"]), {"path": source["path"], "from": "prune_surgery.json"}
        if source.get("repo_id"):
            revision = source.get("commit") or source.get("revision")
            return _fetch(source["repo_id"], revision), {"repo_id": source["repo_id"], "revision": revision,
                                                          "from": "prune_surgery.json"}
        raise SpecError(f"the source recorded in {student}/prune_surgery.json ({source.get('path')}) no longer exists; "
                        "pass --teacher SRC")
    if Path(teacher).exists():
        return Path(teacher), {"path": str(Path(teacher).resolve()), "from": "--teacher"}
    from ..hub import looks_like_repo_id

    if not looks_like_repo_id(teacher):
        raise SpecError(f"--teacher {teacher} is neither an existing folder nor a Hub repo id like org/name")
    return _fetch(teacher, None), {"repo_id": teacher, "revision": None, "from": "--teacher"}


def _check_configs(student: Path, teacher: Path, s: dict[str, Any], t: dict[str, Any], record: dict[str, Any] | None) -> None:
    if s.get("model_type") != t.get("model_type"):
        raise SpecError(f"student {student} is a {s.get('model_type')} model but teacher {teacher} is a "
                        f"{t.get('model_type')}; distill from the model it was pruned from")
    for key, change in ((record or {}).get("config_changes") or {}).items():
        before = change[0] if isinstance(change, list) and change else None
        if "." not in key and key in t and before is not None and t[key] != before:
            raise SpecError(f"{student}/prune_surgery.json says {key} was {before} before pruning, but teacher {teacher} "
                            f"has {t[key]}: it names another source; pass --teacher with the model it was pruned from")


def _check_tokenizers(student: Path, teacher: Path, kept: list[int] | None) -> None:
    from ..calibrate.data import load_tokenizer

    s_vocab = {i: tok for tok, i in load_tokenizer(student).get_vocab().items()}
    t_vocab = {i: tok for tok, i in load_tokenizer(teacher).get_vocab().items()}
    pairs = enumerate(kept) if kept is not None else ((i, i) for i in t_vocab)
    bad = [(new, old) for new, old in pairs if s_vocab.get(new) != t_vocab.get(old)]
    if kept is None and len(s_vocab) != len(t_vocab):
        bad.append((len(s_vocab), len(t_vocab)))
    if bad:
        new, old = bad[0]
        raise SpecError(f"the tokenizers of student {student} and teacher {teacher} do not match ({len(bad)} ids differ, "
                        f"first: student id {new} {s_vocab.get(new)!r} vs teacher id {old} {t_vocab.get(old)!r}); "
                        "distill from the model it was pruned from")


def open_pair(student: Path, teacher: str | None, objective: str) -> Pair:
    """Resolve and check the student/teacher pair (the teacher only when the objective needs one)."""
    if not student.exists():
        raise CheckpointError(f"student {student} does not exist; give the folder 'prune-surgery run' wrote")
    s_config = _config(student, "student")
    record = student_record(student)
    keep = (record or {}).get("keep") or {}
    kept = keep.get("vocab")
    n_real = len(kept) if kept is not None else int(s_config["vocab_size"])
    if objective == "lm":
        return Pair(student, None, None, s_config, None, record, kept, n_real)
    folder, where = resolve_teacher(student, teacher, record)
    t_config = _config(folder, "teacher")
    _check_configs(student, folder, s_config, t_config, record)
    if kept is not None and max(kept, default=0) >= int(t_config["vocab_size"]):
        raise SpecError(f"{student}/prune_surgery.json keeps vocabulary id {max(kept)} but teacher {folder} has only "
                        f"{t_config['vocab_size']} rows: it names another source")
    _check_tokenizers(student, folder, kept)
    return Pair(student, folder, where, s_config, t_config, record, kept, n_real)
