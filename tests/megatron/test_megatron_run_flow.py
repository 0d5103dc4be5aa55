"""The issue's whole flow through the CLI: export --tp 4, run --balance 4, reshard --tp 2, import."""

from __future__ import annotations

import json
import subprocess
import sys

from megatron_fixtures import hf_tensors

import prune_surgery as ps


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


def test_megatron_run_refuses_magnitude(llama, tmp_path):
    meg = tmp_path / "meg"
    assert cli("megatron", "export", str(llama()), str(meg), "--tp", "2").returncode == 0
    result = cli("run", str(meg), str(tmp_path / "out"), "--intermediate-size", "48", "--method", "magnitude")
    assert result.returncode == 2 and "megatron import" in result.stderr and "Traceback" not in result.stderr
