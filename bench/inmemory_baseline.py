"""The in-memory baseline: load the whole model with transformers, index_select, save_pretrained.

This is how the original method and most pruners work: the full model is materialised in
memory (bf16), every module's weight is sliced with ``torch.index_select`` by the kept
indices, the config is updated and ``save_pretrained`` writes the result.

The kept indices are the SAME ones prune-surgery chose: they are read from the
``prune_surgery.json`` it writes into its output, whose ``keep`` object is::

    {"layers": [kept original layer ids], "hidden": [...], "vocab": [...],
     "heads": {"<layer>": [...]}, "kv_heads": {"<layer>": [...]}, "ffn": {"<layer>": [...]}}

A missing space means "not pruned". Per-layer keys are original layer ids (a key that is a
new layer index is accepted too). RMSNorm weights are scaled by sqrt(d/d') and
``rms_norm_eps`` by d/d' when the hidden size shrinks, as prune-surgery does by default
(``--no-norm-rescale`` for plain slicing).

Usage (project .venv, which has torch and transformers)::

    python bench/inmemory_baseline.py SRC OUT --keep PRUNED/prune_surgery.json
    python bench/inmemory_baseline.py SRC OUT --fake-keep hidden=1920,heads=15,ffn=5184,drop=3-4

Prints one JSON line at the end: load_s, prune_s, save_s, total_s.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn


def load_keep(path: Path) -> dict:
    """The ``keep`` object of a ``prune_surgery.json`` (or a bare keep object)."""
    data = json.loads(path.read_text())
    return data.get("keep", data)


def fake_keep(config: dict, spec: str, seed: int = 0) -> dict:
    """A random keep object from ``hidden=N,heads=N,ffn=N,drop=A-B`` (development only)."""
    g = torch.Generator().manual_seed(seed)
    opts = dict(kv.split("=") for kv in spec.split(",") if kv)
    layers = config["num_hidden_layers"]
    drop: set[int] = set()
    for part in opts.get("drop", "").split(":"):
        if part:
            a, _, b = part.partition("-")
            drop.update(range(int(a), int(b or a) + 1))

    def pick(n: int, k: int) -> list[int]:
        return sorted(torch.randperm(n, generator=g)[:k].tolist())

    keep: dict = {"layers": [i for i in range(layers) if i not in drop]}
    if "hidden" in opts:
        keep["hidden"] = pick(config["hidden_size"], int(opts["hidden"]))
    if "heads" in opts:
        keep["heads"] = {str(i): pick(config["num_attention_heads"], int(opts["heads"])) for i in keep["layers"]}
    if "ffn" in opts:
        keep["ffn"] = {str(i): pick(config["intermediate_size"], int(opts["ffn"])) for i in keep["layers"]}
    return keep


def _per_layer(table: dict | None, old: int, new: int) -> list[int] | None:
    """The kept list of a per-layer space for a layer (by original id, else by new index)."""
    if not table:
        return None
    return table.get(str(old), table.get(str(new)))


def _rows(units: list[int], size: int) -> torch.Tensor:
    """Row indices of kept units (heads) each ``size`` rows long."""
    u = torch.tensor(units, dtype=torch.long)
    return (u[:, None] * size + torch.arange(size)[None, :]).reshape(-1)


def _select(linear: nn.Module, dim: int, index: torch.Tensor | None) -> None:
    """Replace ``linear.weight`` with its index_select along ``dim`` (no-op if index is None)."""
    if index is None:
        return
    w = linear.weight.data.index_select(dim, index)
    linear.weight = nn.Parameter(w, requires_grad=False)
    if dim == 0:
        linear.out_features = w.shape[0]
        if getattr(linear, "bias", None) is not None:
            linear.bias = nn.Parameter(linear.bias.data.index_select(0, index), requires_grad=False)
    else:
        linear.in_features = w.shape[1]


def _rescale_norm(norm: nn.Module, hidden: torch.Tensor | None, factor: float) -> None:
    """Slice an RMSNorm weight to the kept hidden channels and scale it by ``factor``."""
    w = norm.weight.data
    if hidden is not None:
        w = w.index_select(0, hidden)
    if factor != 1.0:
        w = (w.float() * factor).to(w.dtype)
    norm.weight = nn.Parameter(w, requires_grad=False)


def prune_model(model: nn.Module, keep: dict, rescale: bool = True) -> None:
    """Prune a loaded ``LlamaForCausalLM`` in place by the keep object and update its config."""
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d = cfg.hidden_size
    hidden = torch.tensor(keep["hidden"], dtype=torch.long) if keep.get("hidden") is not None else None
    d_new = len(keep["hidden"]) if hidden is not None else d
    factor = math.sqrt(d / d_new) if rescale else 1.0
    base = model.model
    old_ids = keep.get("layers", list(range(cfg.num_hidden_layers)))
    base.layers = nn.ModuleList([base.layers[i] for i in old_ids])
    heads_n = kv_n = ffn_n = None
    for new, (old, layer) in enumerate(zip(old_ids, base.layers, strict=True)):
        att, mlp = layer.self_attn, layer.mlp
        att.layer_idx = new
        heads = _per_layer(keep.get("heads"), old, new)
        kv = _per_layer(keep.get("kv_heads"), old, new)
        ffn = _per_layer(keep.get("ffn"), old, new)
        q_rows = _rows(heads, hd) if heads is not None else None
        kv_rows = _rows(kv, hd) if kv is not None else None
        ffn_idx = torch.tensor(ffn, dtype=torch.long) if ffn is not None else None
        for lin in (att.q_proj, att.k_proj, att.v_proj, mlp.gate_proj, mlp.up_proj):
            _select(lin, 1, hidden)
        _select(att.q_proj, 0, q_rows)
        _select(att.k_proj, 0, kv_rows)
        _select(att.v_proj, 0, kv_rows)
        _select(att.o_proj, 0, hidden)
        _select(att.o_proj, 1, q_rows)
        _select(mlp.gate_proj, 0, ffn_idx)
        _select(mlp.up_proj, 0, ffn_idx)
        _select(mlp.down_proj, 0, hidden)
        _select(mlp.down_proj, 1, ffn_idx)
        _rescale_norm(layer.input_layernorm, hidden, factor)
        _rescale_norm(layer.post_attention_layernorm, hidden, factor)
        heads_n = att.q_proj.weight.shape[0] // hd
        kv_n = att.k_proj.weight.shape[0] // hd
        ffn_n = mlp.gate_proj.weight.shape[0]
    _rescale_norm(base.norm, hidden, factor)
    vocab = torch.tensor(keep["vocab"], dtype=torch.long) if keep.get("vocab") is not None else None
    emb = base.embed_tokens
    for dim, index in ((0, vocab), (1, hidden)):
        if index is not None:
            emb.weight = nn.Parameter(emb.weight.data.index_select(dim, index), requires_grad=False)
    emb.num_embeddings, emb.embedding_dim = emb.weight.shape
    if not cfg.tie_word_embeddings:
        _select(model.lm_head, 0, vocab)
        _select(model.lm_head, 1, hidden)
    else:
        model.lm_head.weight = emb.weight
    cfg.vocab_size = emb.weight.shape[0]
    cfg.hidden_size = d_new
    cfg.head_dim = hd
    cfg.num_hidden_layers = len(old_ids)
    if heads_n is not None:
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = heads_n, kv_n, ffn_n
    if rescale and d_new != d:
        cfg.rms_norm_eps = cfg.rms_norm_eps * d / d_new
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in old_ids]


def run(src: Path, out: Path, keep: dict, rescale: bool = True) -> dict[str, float]:
    """Load, prune, save; return the phase timings in seconds."""
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    t1 = time.perf_counter()
    with torch.no_grad():
        prune_model(model, keep, rescale)
    t2 = time.perf_counter()
    model.save_pretrained(out)
    t3 = time.perf_counter()
    return {"load_s": t1 - t0, "prune_s": t2 - t1, "save_s": t3 - t2, "total_s": t3 - t0}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="transformers in-memory prune baseline")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--keep", type=Path, help="prune_surgery.json (or a bare keep object)")
    g.add_argument("--fake-keep", help="hidden=N,heads=N,ffn=N,drop=A-B:C (development)")
    p.add_argument("--no-norm-rescale", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.keep:
        keep = load_keep(a.keep)
    else:
        keep = fake_keep(json.loads((a.src / "config.json").read_text()), a.fake_keep)
    print(json.dumps(run(a.src, a.out, keep, not a.no_norm_rescale)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
