"""Vocabulary pruning of a Megatron torch_dist checkpoint (through an HF view) equals pruning the HF model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "megatron"))
from megatron_fixtures import hf_tensors, read_folder  # noqa: E402
from models import build  # noqa: E402

from prune_surgery.megatron import distmeta, import_megatron  # noqa: E402


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prune_surgery", *args], capture_output=True, text=True, timeout=300)


def test_keep_vocab_on_torch_dist_equals_hf(tokenizer_dirs, corpus_files, tmp_path):
    tok = tokenizer_dirs["spm_bpe"]
    tok_config = json.loads((tok / "config.json").read_text())
    special = {k: v for k, v in tok_config.items() if k.endswith("_token_id")}
    src = build(tmp_path / "src", "llama", vocab_size=tok_config["vocab_size"], shard=None, **special)
    for f in tok.iterdir():
        if f.name != "config.json":
            shutil.copy(f, src / f.name)
    keep_file = tmp_path / "keep-vocab.json"
    assert cli("vocab", "count", str(src), "--corpus", str(corpus_files["domain"]), "--top-k", "150", "-o", str(keep_file)).returncode == 0
    assert cli("megatron", "export", str(src), str(tmp_path / "dist"), "--format", "torch_dist").returncode == 0
    options = ["--keep-vocab", str(keep_file), "--pad-vocab-to-multiple-of", "64", "--drop-layers", "1"]
    result = cli("run", str(tmp_path / "dist"), str(tmp_path / "pruned"), "-q", *options)
    assert result.returncode == 0, result.stderr
    assert distmeta.is_dist_folder(tmp_path / "pruned" / "iter_0000001")
    flags = (tmp_path / "pruned" / "train_args.sh").read_text().split()
    assert flags[flags.index("--tokenizer-type") + 1] == "HuggingFaceTokenizer"
    import_megatron(tmp_path / "pruned", tmp_path / "hf")
    assert cli("run", str(src), str(tmp_path / "reference"), "-q", *options).returncode == 0
    assert hf_tensors(tmp_path / "hf") == hf_tensors(tmp_path / "reference")
    ours, reference = read_folder(tmp_path / "hf"), read_folder(tmp_path / "reference")
    for name in reference:
        if name.startswith("tokenizer") or name == "special_tokens_map.json":
            assert ours[name] == reference[name], name
