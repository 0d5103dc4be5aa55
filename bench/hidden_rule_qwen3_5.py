"""The earlier hidden rule on Qwen3.5, emulated: norms times sqrt(d/d'), eps times d/d', k_proj and the q rows of
the gated q_proj times sqrt(d/d') (as the qwen3 table did), against the residual-stream rule.

    .venv/bin/python bench/hidden_rule_qwen3_5.py

The earlier rule cannot be exact here: the gated DeltaNet norm shares rms_norm_eps behind a
conv + SiLU.  Prints the max |logit error| of both against the masked original.
"""
import sys, json, math; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "tests"))
import numpy as np, torch
from safetensors.numpy import load_file, save_file
import prune_surgery as ps
from models_families_2026 import build, masked_qwen3_5
from models import keep_of, load, logits, sample_ids
from pathlib import Path
import tempfile; root = Path(tempfile.mkdtemp())
for eps in (1e-6, 0.1):
    src = build(root / f"src{eps}", "qwen3_5", shard=None, rms_norm_eps=eps)
    out = root / f"plain{eps}"
    ps.run(src, out, ps.PruneSpec(sizes={"hidden_size": 32}, norm_rescale=False, seed=3))
    s = math.sqrt(64 / 32)
    t = load_file(out / "model.safetensors")
    for k in t:   # the old rule: (1 + w) norms over hidden times sqrt(d/d'), eps times d/d'
        if k.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")) or k == "model.norm.weight":
            t[k] = ((t[k] + 1) * np.float32(s) - 1).astype(np.float32)
        if k.endswith("self_attn.k_proj.weight"):  # old qwen3 rule for q/k norms
            t[k] = (t[k] * np.float32(s)).astype(np.float32)
        if k.endswith("self_attn.q_proj.weight"):  # q rows only: the gate rows sit behind a sigmoid
            q = t[k].reshape(-1, 2, 8, t[k].shape[1]).copy(); q[:, 0] *= np.float32(s); t[k] = q.reshape(t[k].shape)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text()); cfg["rms_norm_eps"] = eps * 2; (out / "config.json").write_text(json.dumps(cfg))
    new = root / f"new{eps}"
    ps.run(src, new, ps.PruneSpec(sizes={"hidden_size": 32}, seed=3))
    ref = logits(masked_qwen3_5(src, keep_of(out)), sample_ids())
    for name, o in (("old rule", out), ("new rule", new)):
        print(f"qwen3_5 hidden 64->32 eps {eps}: {name} max |logit error| {(logits(load(o), sample_ids()) - ref).abs().max().item():.3g} (max |logit| {ref.abs().max().item():.3g})")
