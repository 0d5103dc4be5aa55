"""Measure hidden pruning's exactness under two rules: float32 and bfloat16 logit errors.

    .venv/bin/python bench/hidden_rule.py OLD_TREE [--eps 1e-2]

OLD_TREE holds a `prune_surgery` package with the rule to compare against (e.g.
`git archive <commit> prune_surgery | tar -x -C OLD_TREE`); the working tree's package is the
other.  Every family of the tables' tiny test models is pruned hidden 64 -> 48 by both, in
float32 and bfloat16, and its logits compared with the masked original (pruned channels
zeroed) in float32.  `--eps` sets rms_norm_eps / layer_norm_eps of the tiny models, to make
eps-related inexactness visible above float32 noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FAMILIES = ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "phi3", "phi3_tied", "mixtral", "qwen2_moe", "qwen3_moe",
            "gemma", "gemma_untied", "gemma2", "gemma3", "gpt_neox", "smollm3", "olmo2", "olmo3", "gpt2", "qwen3_5"]
PRUNE = "import json, sys, prune_surgery as ps; ps.run(sys.argv[1], sys.argv[2], ps.PruneSpec(sizes=json.loads(sys.argv[3]), seed=3))"
#: GPT-NeoX and GPT-2 derive head_dim = hidden / heads: their heads go with hidden
SIZES = {"gpt_neox": {"hidden_size": 48, "num_attention_heads": 6}, "gpt2": {"hidden_size": 48, "num_attention_heads": 6}}


def _build(path: Path, name: str, eps: float | None) -> Path:
    import models
    import models_families_2026 as families

    tied = {"tie_word_embeddings": True} if name.endswith("_tied") else {"tie_word_embeddings": False} if name.endswith("_untied") else {}
    family = name.removesuffix("_tied").removesuffix("_untied")
    over = dict(tied)
    if eps is not None:
        over["layer_norm_epsilon" if family == "gpt2" else "layer_norm_eps" if family == "gpt_neox" else "rms_norm_eps"] = eps
    if family in ("llama", "mistral", "qwen2", "qwen3"):
        return models.build(path, family, shard=None, **over)
    return families.build(path, family, shard=None, **over)


def _bf16(src: Path, dst: Path) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for shard in dst.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(shard).items()}, shard, metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _error(src: Path, out: Path, name: str) -> float:
    from models import keep_of, load, logits, sample_ids
    from models_families import masked_reference
    from models_families_2026 import masked_gpt2, masked_qwen3_5

    family = name.removesuffix("_tied").removesuffix("_untied")
    keep = keep_of(out)
    masked = {"gpt2": masked_gpt2, "qwen3_5": masked_qwen3_5}
    reference = masked[family](src, keep) if family in masked else masked_reference(src, family, keep)
    ids = sample_ids()
    return (logits(load(out), ids) - logits(reference, ids)).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path)
    parser.add_argument("--eps", type=float, default=None)
    args = parser.parse_args()
    trees = {"old": str(args.old.resolve()), "new": str(ROOT)}
    print(f"{'family':14} {'old f32':>10} {'new f32':>10} {'old bf16':>10} {'new bf16':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in FAMILIES:
            src = _build(Path(tmp) / name, name, args.eps)
            sources = {"f32": src, "bf16": _bf16(src, Path(tmp) / f"{name}-bf16")}
            row = {}
            for dtype, source in sources.items():
                for rule, tree in trees.items():
                    out = Path(tmp) / f"{name}-{dtype}-{rule}"
                    env = {**os.environ, "PYTHONPATH": tree}
                    sizes = json.dumps(SIZES.get(name, {"hidden_size": 48}))
                    done = subprocess.run([sys.executable, "-c", PRUNE, str(source), str(out), sizes], env=env, cwd=tmp,
                                          capture_output=True, text=True)  # cwd: not the working tree's package
                    # nan: that tree cannot prune the family (no table, or a table feature it lacks)
                    row[f"{rule} {dtype}"] = _error(source, out, name) if done.returncode == 0 else float("nan")
            print(f"{name:14} " + " ".join(f"{row[k]:10.3g}" for k in ("old f32", "new f32", "old bf16", "new bf16")), flush=True)


if __name__ == "__main__":
    main()
