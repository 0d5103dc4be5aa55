"""Session fixtures of the vocabulary tests: tokenizer folders, corpora, pruned outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from corpus_text import domain_lines, held_out_lines, training_lines  # noqa: E402
from vocab_fixtures import BUILDERS, Pruned, write_output  # noqa: E402

from prune_surgery.vocab import build_keep_vocab  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One source folder per tokenizer kind, trained once per test session."""
    root = tmp_path_factory.mktemp("tokenizers")
    folders = {}
    for kind, build in BUILDERS.items():
        folder = root / kind
        folder.mkdir()
        build(folder)
        folders[kind] = folder
    return folders


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Plain-text corpora: training text, the counting domain (English prose), held-out text."""
    root = tmp_path_factory.mktemp("corpus")
    files = {}
    for name, lines in (("train", training_lines()), ("domain", domain_lines()), ("held_out", held_out_lines())):
        files[name] = root / f"{name}.txt"
        files[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return files


@pytest.fixture(scope="session")
def pruned(
    tokenizer_dirs: dict[str, Path], corpus_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Pruned]:
    """Every tokenizer kind counted on the prose domain (min count 1) and pruned to it."""
    root = tmp_path_factory.mktemp("pruned")
    result = {}
    for kind, src in tokenizer_dirs.items():
        keep = build_keep_vocab(src, [corpus_files["domain"]])
        written = write_output(src, root / kind, keep["vocab"])
        result[kind] = Pruned(src, root / kind, keep, written)
    return result
