"""Selection: layer choice, balance, magnitude, spec files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import prune_surgery as ps
from models import keep_of
from prune_surgery.select import choose, layers_to_drop, shared_ints


@pytest.mark.parametrize("n,d", [(4, 1), (12, 3), (24, 2), (32, 10), (8, 6)])
def test_chosen_layers_spread_from_the_middle(n, d):
    drop = layers_to_drop(n, d)
    assert len(drop) == d == len(set(drop)) and 0 not in drop and n - 1 not in drop
    assert abs(np.mean(drop) - (n - 1) / 2) <= 1
    if 2 * d <= n - 2:
        assert all(b - a >= 2 for a, b in zip(drop, drop[1:]))  # spread: a kept layer between


def test_num_hidden_layers_option(checkpoints, tmp_path):
    plan = ps.plan(checkpoints["llama"], ps.PruneSpec(sizes={"num_hidden_layers": 3}))
    assert plan.keep["layers"] in ([0, 2, 3], [0, 1, 3]) and plan.new_config["num_hidden_layers"] == 3


def test_balanced_partitions_keep_equal_counts(checkpoints):
    spec = ps.PruneSpec(sizes={"hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
                               "num_key_value_heads": 2}, balance=2)
    keep = ps.plan(checkpoints["llama"], spec).keep
    assert sum(i < 32 for i in keep["hidden"]) == 16
    for layer in map(str, range(4)):
        assert sum(i < 48 for i in keep["ffn"][layer]) == 24
        assert sum(g < 2 for g in keep["kv_heads"][layer]) == 1
        assert sum(h < 4 for h in keep["heads"][layer]) == 2


def test_magnitude_keeps_the_largest_units(checkpoints, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(checkpoints["llama"], src)
    strong = [5, 17, 40, 77]
    for shard in src.glob("*.safetensors"):
        tensors = load_file(shard)
        for name, value in tensors.items():
            if name.endswith("mlp.gate_proj.weight"):
                value[strong] *= 100
        save_file(tensors, shard, metadata={"format": "pt"})
    keep = ps.plan(src, ps.PruneSpec(sizes={"intermediate_size": 40}, method="magnitude")).keep
    for layer in map(str, range(4)):
        assert set(strong) <= set(keep["ffn"][layer])
    random_keep = ps.plan(src, ps.PruneSpec(sizes={"intermediate_size": 40})).keep
    assert any(not set(strong) <= set(random_keep["ffn"][l]) for l in map(str, range(4)))


def test_original_method_config_is_a_spec(checkpoints, tmp_path):
    spec_file = tmp_path / "prune.json"
    spec_file.write_text(json.dumps({"hidden_size_remain": 48, "num_attention_heads_remain": 4,
                                     "ffn_hidden_size_remain": 64, "drop_layers": [1, 2]}))
    spec = ps.load_spec_file(spec_file)
    plan = ps.plan(checkpoints["llama"], spec)
    assert plan.new_config["hidden_size"] == 48 and plan.new_config["intermediate_size"] == 64
    assert plan.new_config["num_attention_heads"] == 4 and plan.keep["layers"] == [0, 3]


def test_yaml_spec_and_cli_options_agree(checkpoints, tmp_path):
    import subprocess
    import sys

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("hidden-size: 48\ndrop_layers: 1-2\nseed: 5\nmax_shard_size: 100KB\n")
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    for out, args in ((out_a, ["--spec", str(spec_file)]),
                      (out_b, ["--hidden-size", "48", "--drop-layers", "1,2", "--seed", "5", "--max-shard-size", "100KB"])):
        result = subprocess.run([sys.executable, "-m", "prune_surgery", "run", str(checkpoints["llama"]), str(out), "-q", *args],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert keep_of(out_a) == keep_of(out_b)
    assert len(list(out_a.glob("*.safetensors"))) > 1
    index = json.loads((out_a / "model.safetensors.index.json").read_text())
    params_after = json.loads((out_a / "prune_surgery.json").read_text())["params"]["after"]
    assert index["metadata"]["total_size"] == params_after * 4  # float32


def test_mha_source_stays_mha_when_only_heads_are_given(tmp_path):
    from models import build, load

    src = build(tmp_path / "mha", "llama", num_key_value_heads=8)
    ps.run(src, tmp_path / "out", ps.PruneSpec(sizes={"num_attention_heads": 4, "hidden_size": 32}))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_attention_heads"] == config["num_key_value_heads"] == 4
    load(tmp_path / "out")


def test_prune_surgery_json_is_compact_and_reloads(checkpoints, tmp_path):
    ps.run(checkpoints["llama"], tmp_path / "out", ps.PruneSpec(sizes={"intermediate_size": 48}))
    text = (tmp_path / "out" / "prune_surgery.json").read_text()
    record = json.loads(text)
    assert len(text.splitlines()) < 40 and record["keep"]["ffn"]["0"] == keep_of(tmp_path / "out")["ffn"]["0"]
    assert record["plan_hash"].startswith("sha256:") and record["source"]["path"]


def test_command_line_options_override_the_spec_file(checkpoints, tmp_path):
    import subprocess
    import sys

    first = tmp_path / "first"
    ps.run(checkpoints["llama"], first, ps.PruneSpec(sizes={"intermediate_size": 48}))
    (tmp_path / "specs").mkdir()
    spec_file = tmp_path / "specs" / "spec.yaml"
    spec_file.write_text("hidden-size: 48\nseed: 5\nkeep: ../first/prune_surgery.json\n")
    result = subprocess.run([sys.executable, "-m", "prune_surgery", "plan", str(checkpoints["llama"]), "--json",
                             "--spec", str(spec_file), "--hidden-size", "32"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["new_config"]["hidden_size"] == 32 and plan["spec"]["seed"] == 5
    assert plan["keep"]["ffn"] == keep_of(first)["ffn"]  # the keep file, found next to the spec


def test_kept_index_lists_share_their_int_objects():
    """Per-layer index lists hold shared ints (8 bytes per index, not 40), with the same values as plain ints."""
    values = np.array([3, 70000, 5, 70000], dtype=np.int32)
    a, b = shared_ints(values), shared_ints(np.array([70000, 3]))
    assert a == [3, 70000, 5, 70000] and all(type(v) is int for v in a)
    assert a[1] is b[0] and a[1] is a[3]
    rng1, rng2 = np.random.default_rng(1), np.random.default_rng(1)
    picked = choose(50000, 30000, "random", rng1, None, parts=2)
    expected = sorted(int(i) + p * 25000 for p in range(2) for i in rng2.choice(25000, 15000, replace=False))
    assert picked == expected
    assert shared_ints([]) == []
