"""The model card says how to get a GGUF, and why a vocabulary-pruned model needs `prune-surgery gguf`."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gguf_fixtures import cli  # noqa: E402

from prune_surgery.card import render_model_card


def card_of(folder: Path, keep: dict, repo_id: str | None) -> str:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 3}))
    (folder / "prune_surgery.json").write_text(json.dumps({"keep": keep, "source": {"repo_id": "org/base"}}))
    return render_model_card(folder, repo_id=repo_id)


def test_card_of_a_vocab_pruned_model(tmp_path):
    card = card_of(tmp_path / "a", {"vocab": [0, 1, 5], "layers": [0, 2]}, "me/small")
    section = card.split("## GGUF (llama.cpp, Ollama, LM Studio)")[1]
    assert "pip install 'prune-surgery[gguf]'" in section
    assert "hf download me/small --local-dir small" in section
    command = re.search(r"^prune-surgery gguf .*$", section, re.M).group(0)
    assert shlex.split(command)[2:] == ["small", "small-f16.gguf", "--outtype", "f16"]
    assert "source_tokenizer" in section and "convert_hf_to_gguf.py" in section
    done = cli(*shlex.split(command)[1:2], "--help")  # the command the card names exists
    assert done.returncode == 0 and "--outtype" in done.stdout


def test_card_of_a_model_with_its_source_vocabulary(tmp_path):
    card = card_of(tmp_path / "b", {"layers": [0, 2]}, None)
    section = card.split("## GGUF (llama.cpp, Ollama, LM Studio)")[1]
    assert "prune-surgery gguf this-model this-model-f16.gguf" in section
    assert "also works directly" in section and "source_tokenizer" not in section
