"""Fixtures of the Megatron tests (they need torch and transformers, both in the test extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from megatron_fixtures import make_llama


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory):
    """llama(tied, dtype) -> folder of a saved tiny model (built once per session)."""
    cache: dict[tuple[bool, str], Path] = {}

    def get(tied: bool = False, dtype: str = "float32") -> Path:
        key = (tied, dtype)
        if key not in cache:
            cache[key] = make_llama(tmp_path_factory.mktemp(f"llama-{'tied' if tied else 'untied'}-{dtype}"), tied=tied, dtype=dtype)
        return cache[key]

    return get
