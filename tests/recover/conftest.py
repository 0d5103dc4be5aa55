"""Fixtures of the recovery tests: a tiny LLaMA teacher with a tokenizer, pruned students, real text."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "calibrate"))

import models  # noqa: E402
from tinytok import add_tokenizer  # noqa: E402

import prune_surgery as ps  # noqa: E402
from prune_surgery.calibrate.realmodel import real_text  # noqa: E402


@pytest.fixture(scope="session")
def text() -> tuple[Path, Path]:
    """(training, held-out) real English prose: Python's documentation topics."""
    return real_text()


@pytest.fixture(scope="session")
def teacher(tmp_path_factory: pytest.TempPathFactory, text: tuple[Path, Path]) -> Path:
    """A tiny float32 LLaMA (4 layers, vocabulary 128) with its own tokenizer."""
    root = tmp_path_factory.mktemp("teacher")
    return add_tokenizer(models.build(root / "llama", "llama"), text[0].read_text()[:20000])


@pytest.fixture(scope="session")
def student(tmp_path_factory: pytest.TempPathFactory, teacher: Path) -> Path:
    """The teacher with its FFN pruned 96 -> 48 and one layer dropped."""
    out = tmp_path_factory.mktemp("students") / "ffn"
    ps.run(teacher, out, ps.PruneSpec(sizes={"intermediate_size": 48, "num_hidden_layers": 3}))
    return out


@pytest.fixture(scope="session")
def vocab_student(tmp_path_factory: pytest.TempPathFactory, teacher: Path) -> Path:
    """The teacher with its vocabulary pruned to 100 of 128 ids (specials kept), padded to 104 rows."""
    out = tmp_path_factory.mktemp("students") / "vocab"
    spec = ps.spec_from_dict({"intermediate_size": 48, "keep_vocab": [0, 1, 2, *range(5, 102)], "pad_vocab_to_multiple_of": 8})
    ps.run(teacher, out, spec)
    return out
