"""Session fixtures of the GGUF tests: the pinned converter, tokenizer folders, the real SmolLM2."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "vocab"))
from corpus_text import domain_lines, held_out_lines, training_lines  # noqa: E402
from prune_surgery.calibrate.realmodel import smollm2 as smollm2_checkpoint  # noqa: E402
from vocab_fixtures import BUILDERS  # noqa: E402

from prune_surgery.llamacpp.converter import converter_dir  # noqa: E402


@pytest.fixture(scope="session")
def converter() -> Path:
    """llama.cpp's converter from the pinned llama-cpp-python sdist (fetched from PyPI once, cached)."""
    return converter_dir()


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as bf16 safetensors (cached outside the repository)."""
    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def tokenizers_for_gguf(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tokenizer folders: SentencePiece (trained here), SmolLM2's byte-level BPE, an unknown byte-level BPE."""
    root = tmp_path_factory.mktemp("gguf-tokenizers")
    folders = {}
    for kind in ("spm_bpe", "bytelevel"):
        folders[kind] = root / kind
        folders[kind].mkdir()
        BUILDERS[kind](folders[kind])
    folders["smollm2"] = root / "smollm2"
    folders["smollm2"].mkdir()
    for f in smollm2.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "generation_config.json":
            shutil.copy(f, folders["smollm2"] / f.name)
    return folders


@pytest.fixture(scope="session")
def gguf_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The counting corpus (training text and prose) and a held-out text."""
    root = tmp_path_factory.mktemp("gguf-corpus")
    files = {"count": root / "count.txt", "held_out": root / "held_out.txt"}
    files["count"].write_text("\n".join(training_lines() + domain_lines()) + "\n", encoding="utf-8")
    files["held_out"].write_text("\n".join(held_out_lines()) + "\n", encoding="utf-8")
    return files
