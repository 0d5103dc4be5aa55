"""The demo: build a small LLaMA checkpoint, prune it with the CLI, load the result, compare.

Run with `make demo`.  Everything is made here: no download.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent / "demo"
CLI = [sys.executable, "-m", "prune_surgery"]


def main() -> None:
    """Build, inspect, plan, run, load and check one pruning job."""
    shutil.rmtree(ROOT, ignore_errors=True)
    src, out = ROOT / "tiny-llama", ROOT / "tiny-llama-pruned"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                                      num_attention_heads=8, num_key_value_heads=4, vocab_size=1000)
    transformers.LlamaForCausalLM(config).save_pretrained(src, max_shard_size="1MB")
    print(f"built {src}")
    job = ["--hidden-size", "192", "--num-attention-heads", "6", "--num-key-value-heads", "3",
           "--intermediate-size", "512", "--drop-layers", "3,5"]
    for args in (["inspect", str(src)], ["plan", str(src), *job], ["run", str(src), str(out), "--quiet", *job]):
        print("$ prune-surgery " + " ".join(args), flush=True)
        subprocess.run([*CLI, *args], check=True)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    missing = info["missing_keys"] or info["unexpected_keys"]
    record = json.loads((out / "prune_surgery.json").read_text())
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
    print(f"loaded {out} in transformers: {sum(p.numel() for p in model.parameters()):,} parameters "
          f"(from {record['params']['before']:,}), missing/unexpected keys: {sorted(missing) or 'none'}")
    print(f"logits shape {tuple(logits.shape)}, finite: {bool(torch.isfinite(logits).all())}")
    if missing or not torch.isfinite(logits).all():
        raise SystemExit("demo failed")


if __name__ == "__main__":
    main()
