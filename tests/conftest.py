"""Shared fixtures: tiny checkpoints are built once per session and never modified."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import build


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny float32 checkpoints of every LLaMA-family table, tied and untied."""
    root = tmp_path_factory.mktemp("ckpt")
    made = {}
    for family in ("llama", "mistral", "qwen2", "qwen3"):
        made[family] = build(root / family, family)
    made["llama_tied"] = build(root / "llama_tied", "llama", tie_word_embeddings=True)
    made["qwen2_tied"] = build(root / "qwen2_tied", "qwen2", tie_word_embeddings=True)
    return made
