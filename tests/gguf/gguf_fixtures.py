"""Helpers of the GGUF tests: tiny models around real tokenizers, the CLI, GGUF metadata read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
from models import build  # noqa: E402

SPECIAL_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
#: GGUF key of each special id (llama.cpp's names).
GGUF_SPECIAL = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
                "pad_token_id": "padding_token_id", "unk_token_id": "unknown_token_id"}


def cli(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m prune_surgery ARGS`` (with `env` added to the environment)."""
    return subprocess.run([sys.executable, "-m", "prune_surgery", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def tiny_with_tokenizer(tokenizer_dir: Path, dst: Path, *, tied: bool, **overrides: Any) -> Path:
    """A tiny random llama whose vocabulary and special ids are those of `tokenizer_dir`'s tokenizer."""
    config = json.loads((tokenizer_dir / "config.json").read_text())
    special = {k: config[k] for k in SPECIAL_KEYS if isinstance(config.get(k), int)}
    build(dst, "llama", vocab_size=config["vocab_size"], tie_word_embeddings=tied, shard=None, **special, **overrides)
    for f in tokenizer_dir.iterdir():
        if f.is_file() and f.name not in ("config.json", "generation_config.json") and not f.name.endswith(".safetensors") \
                and not f.name.endswith(".index.json"):
            shutil.copy(f, dst / f.name)
    return dst


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(metadata key -> value, tensor name -> float32 array in transformers' row-major shape) read with `gguf`."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:
        data = np.array(t.data)
        tensors[t.name] = data.astype(np.float32).reshape(list(reversed(t.shape.tolist())))
    return fields, tensors


def hf_tokens(tokenizer_json: Path, size: int) -> list[str]:
    """Token of every id 0..size-1 of a tokenizer.json (model vocab and added tokens; llama.cpp's [PADi] beyond)."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    by_id = {int(i): t for t, i in data["model"]["vocab"].items()}
    by_id.update({int(a["id"]): a["content"] for a in data.get("added_tokens") or []})
    return [by_id.get(i, f"[PAD{i}]") for i in range(size)]


def hf_merges(tokenizer_json: Path) -> list[str]:
    """The BPE merges of a tokenizer.json as llama.cpp stores them ("left right")."""
    merges = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in merges]
