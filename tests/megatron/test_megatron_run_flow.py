"""The issue's whole flow through the CLI: export --tp 4, run --balance 4, reshard --tp 2, import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megatron_fixtures import hf_tensors

import prune_surgery as ps
from prune_surgery.megatron import distmeta, import_megatron, is_megatron_checkpoint


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prune_surgery", *args], capture_output=True, text=True, timeout=300)


def test_prune_megatron_then_reshard_and_import_equals_pruning_hf(llama, tmp_path):
    src = llama(tied=False, dtype="bfloat16")
    meg, pruned, resharded, back = (tmp_path / n for n in ("meg", "pruned", "tp2", "hf"))
    for args in (["megatron", "export", str(src), str(meg), "--tp", "4"],
                 ["run", str(meg), str(pruned), "-q", "--hidden-size", "32", "--num-attention-heads", "4",
                  "--num-key-value-heads", "4", "--intermediate-size", "64", "--drop-layers", "1"],
                 ["megatron", "reshard", str(pruned), str(resharded), "--tp", "2"],
                 ["megatron", "import", str(resharded), str(back)]):
        result = cli(*args)
        assert result.returncode == 0, (args, result.stderr)
    record = json.loads((pruned / "prune_surgery.json").read_text())
    keep = record["keep"]
    assert record["spec"]["balance"] == 4
    assert keep["layers"] == [0, 2]
    ps.run(src, tmp_path / "reference", ps.PruneSpec(keep=keep))
    assert hf_tensors(back) == hf_tensors(tmp_path / "reference")
    ours = json.loads((back / "config.json").read_text())
    reference = json.loads((tmp_path / "reference" / "config.json").read_text())
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "num_hidden_layers",
                "head_dim", "rms_norm_eps"):
        assert ours[key] == reference[key], key
    for layer in map(str, keep["layers"]):  # balanced: every TP rank lost the same count
        assert [sum(i * 4 // 96 == r for i in keep["ffn"][layer]) for r in range(4)] == [16] * 4


@pytest.mark.parametrize("fmt", ["torch", "torch_dist"])
def test_megatron_magnitude_goes_through_hf_and_keeps_the_format(llama, tmp_path, fmt):
    """--method magnitude on Megatron: import, prune, export back (same format and TP size);
    the result equals magnitude pruning of the HF model (balanced over the TP size)."""
    src, meg = llama(), tmp_path / "meg"
    assert cli("megatron", "export", str(src), str(meg), "--tp", "2", "--format", fmt).returncode == 0
    options = ["--intermediate-size", "48", "--num-key-value-heads", "2", "--num-attention-heads", "4", "--method", "magnitude"]
    result = cli("run", str(meg), str(tmp_path / "out"), "-q", *options, *(["--balance", "2"] if fmt == "torch_dist" else []))
    assert result.returncode == 0, result.stderr
    assert is_megatron_checkpoint(tmp_path / "out") and (tmp_path / "out" / "train_args.sh").is_file()
    assert distmeta.is_dist_folder(tmp_path / "out" / "iter_0000001") == (fmt == "torch_dist")
    import_megatron(tmp_path / "out", tmp_path / "hf")
    assert cli("run", str(src), str(tmp_path / "reference"), "-q", *options, "--balance", "2").returncode == 0
    assert hf_tensors(tmp_path / "hf") == hf_tensors(tmp_path / "reference")
