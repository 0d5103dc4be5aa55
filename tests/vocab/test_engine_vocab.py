"""Vocabulary pruning end to end: count, run --keep-vocab, verify; logits at kept ids unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from models import build, load  # noqa: E402

CASES = [("spm_bpe", "llama", False), ("spm_bpe", "llama", True), ("bytelevel", "qwen2", True), ("spm_unigram", "mistral", False)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prune_surgery", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind,family,tied", CASES)
def test_vocab_pruned_model_keeps_logits_at_kept_ids(tokenizer_dirs, corpus_files, tmp_path, kind, family, tied):
    tok = tokenizer_dirs[kind]
    tok_config = json.loads((tok / "config.json").read_text())
    special = {k: v for k, v in tok_config.items() if k.endswith("_token_id")}
    src = build(tmp_path / "src", family, vocab_size=tok_config["vocab_size"], tie_word_embeddings=tied, **special)
    for f in tok.iterdir():
        if f.name != "config.json":
            shutil.copy(f, src / f.name)
    keep_file = tmp_path / "keep-vocab.json"
    result = cli("vocab", "count", str(src), "--corpus", str(corpus_files["domain"]), "--top-k", "150", "-o", str(keep_file))
    assert result.returncode == 0, result.stderr
    kept = json.loads(keep_file.read_text())["vocab"]
    out = tmp_path / "out"
    result = cli("run", str(src), str(out), "-q", "--keep-vocab", str(keep_file), "--pad-vocab-to-multiple-of", "64",
                 "--drop-layers", "1")
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] % 64 == 0 and len(kept) <= config["vocab_size"] < len(kept) + 64
    for key, old in special.items():
        if isinstance(old, int):
            assert config[key] == kept.index(old)
    generation = json.loads((out / "generation_config.json").read_text())
    old_eos = json.loads((src / "generation_config.json").read_text())["eos_token_id"]
    remapped = [kept.index(i) for i in old_eos] if isinstance(old_eos, list) else kept.index(old_eos)
    assert generation["eos_token_id"] == remapped
    record = json.loads((out / "prune_surgery.json").read_text())
    assert record["keep"]["vocab"] == kept
    result = cli("vocab", "verify", str(src), str(out), "--corpus", str(corpus_files["held_out"]))
    assert result.returncode == 0, result.stdout + result.stderr

    original, pruned = load(src), load(out)
    original.model.layers = torch.nn.ModuleList(original.model.layers[i] for i in record["keep"]["layers"])
    for new, layer in enumerate(original.model.layers):
        layer.self_attn.layer_idx = new
    old_ids = torch.tensor([kept[i] for i in range(0, len(kept), max(1, len(kept) // 20))][:16]).unsqueeze(0)
    new_ids = torch.tensor([kept.index(int(i)) for i in old_ids[0]]).unsqueeze(0)
    with torch.no_grad():
        want = original(input_ids=old_ids, use_cache=False).logits[..., kept]
        got = pruned(input_ids=new_ids, use_cache=False).logits
    assert torch.allclose(got[..., : len(kept)], want, atol=1e-5)
    assert torch.all(got[..., len(kept):] == 0)  # padded rows are zero: never to be sampled
