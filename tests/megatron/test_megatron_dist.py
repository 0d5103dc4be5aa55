"""torch_dist checkpoints without megatron: HF <-> torch_dist <-> legacy rank files, byte for byte; errors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch
from megatron_fixtures import hf_tensors, read_folder
from test_megatron_roundtrip import load_plain

import prune_surgery as ps
from prune_surgery.megatron import export_hf, import_megatron, read_checkpoint, reshard_megatron
from prune_surgery.megatron import distmeta


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prune_surgery", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_torch_dist_hf_is_byte_identical(llama, tmp_path, tied, dtype):
    src = llama(tied, dtype)
    export_hf(src, tmp_path / "dist", fmt="torch_dist")
    meta = distmeta.read_metadata(tmp_path / "dist" / "iter_0000001")
    qkv = meta.tensors["decoder.layers.self_attention.linear_qkv.weight"]
    assert qkv.shape == (3, 4 * (2 + 2) * 8, 64) and len(qkv.chunks) == 3  # stacked layers, one chunk per layer
    assert ("output_layer.weight" in meta.tensors) != tied
    import_megatron(tmp_path / "dist", tmp_path / "hf")
    assert read_folder(tmp_path / "hf") == read_folder(src)


def _rank_tensors(folder, tp):
    return [{k: v for k, v in load_plain(folder / f"iter_0000001/mp_rank_{r:02d}/model_optim_rng.pt")["model"].items()
             if v is not None} for r in range(tp)]


def test_legacy_torch_dist_legacy_is_tensor_identical(llama, tmp_path):
    """legacy TP=2 -> torch_dist -> legacy TP=2: every tensor of every rank is equal, bit for bit."""
    export_hf(llama(False, "bfloat16"), tmp_path / "legacy", tp=2, spec="local")
    reshard_megatron(tmp_path / "legacy", tmp_path / "dist", tp=2, fmt="torch_dist")
    assert read_checkpoint(tmp_path / "dist").location.dist
    reshard_megatron(tmp_path / "dist", tmp_path / "back", tp=2, spec="local", fmt="torch")
    before, after = _rank_tensors(tmp_path / "legacy", 2), _rank_tensors(tmp_path / "back", 2)
    assert [sorted(r) for r in before] == [sorted(r) for r in after]
    for old, new in zip(before, after):
        for key, tensor in old.items():
            assert tensor.dtype == new[key].dtype and torch.equal(tensor.view(torch.int16), new[key].view(torch.int16)), key
    args = load_plain(tmp_path / "back/iter_0000001/mp_rank_01/model_optim_rng.pt")["args"]
    assert args.tensor_model_parallel_size == 2 and args.ckpt_format == "torch"


def test_reads_one_layer_from_its_chunks(llama, tmp_path, monkeypatch):
    """Peak memory is one layer's chunks: reading a layer never loads another layer's chunk."""
    export_hf(llama(), tmp_path / "dist", fmt="torch_dist")
    ckpt = read_checkpoint(tmp_path / "dist")
    loaded = []
    real = distmeta.load_chunk

    def spy(folder, chunk):
        loaded.append(chunk.offsets)
        return real(folder, chunk)

    monkeypatch.setattr("prune_surgery.megatron.dist.load_chunk", spy)
    ckpt.raw(0, "fc1", 1)
    assert loaded == [(1, 0, 0)]


def test_prune_torch_dist_equals_pruning_hf(llama, tmp_path):
    src = llama(False, "float32")
    assert cli("megatron", "export", str(src), str(tmp_path / "dist"), "--format", "torch_dist").returncode == 0
    result = cli("run", str(tmp_path / "dist"), str(tmp_path / "pruned"), "-q", "--hidden-size", "48",
                 "--num-attention-heads", "4", "--num-key-value-heads", "2", "--intermediate-size", "64", "--drop-layers", "1",
                 "--balance", "2")
    assert result.returncode == 0, result.stderr
    assert distmeta.is_dist_folder(tmp_path / "pruned" / "iter_0000001")
    flags = (tmp_path / "pruned" / "train_args.sh").read_text().split()
    for flag, value in (("--num-layers", "2"), ("--hidden-size", "48"), ("--ffn-hidden-size", "64"),
                        ("--num-query-groups", "2"), ("--num-attention-heads", "4"), ("--tensor-model-parallel-size", "2"),
                        ("--ckpt-format", "torch_dist")):
        assert flags[flags.index(flag) + 1] == value, flag
    assert "--finetune" in flags and "--untie-embeddings-and-output-weights" in flags
    keep = json.loads((tmp_path / "pruned" / "prune_surgery.json").read_text())["keep"]
    import_megatron(tmp_path / "pruned", tmp_path / "hf")
    ps.run(src, tmp_path / "reference", ps.PruneSpec(keep=keep))
    assert hf_tensors(tmp_path / "hf") == hf_tensors(tmp_path / "reference")


def _dist_copy(llama, tmp_path, rename):
    """A torch_dist export whose metadata keys are renamed by `rename` (None drops the key)."""
    export_hf(llama(), tmp_path / "dist", fmt="torch_dist")
    path = tmp_path / "dist" / "iter_0000001" / ".metadata"
    meta = pickle.loads(path.read_bytes())  # our own file, made by this test
    meta.state_dict_metadata = {rename(k): v for k, v in meta.state_dict_metadata.items() if rename(k)}
    meta.storage_data = {type(i)(rename(i.fqn), i.offset): v for i, v in meta.storage_data.items() if rename(i.fqn)}
    path.write_bytes(pickle.dumps(meta))
    return tmp_path / "dist"


@pytest.mark.parametrize(("rename", "message"), [
    (lambda k: "optimizer.state.exp_avg." + k, "optimizer state only"),
    (lambda k: k.replace("mlp.linear_fc1", "mlp.experts.linear_fc1"), "MoE"),
    (lambda k: None if k.startswith("decoder.layers.mlp.linear_fc2.weight") else k, "lacks fc2"),
])
def test_unsupported_torch_dist_is_one_line_error(llama, tmp_path, rename, message):
    src = _dist_copy(llama, tmp_path, rename)
    before = read_folder(src)
    result = cli("megatron", "import", str(src), str(tmp_path / "out"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert read_folder(src) == before


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_metadata_naming_other_code_is_refused(llama, tmp_path):
    export_hf(llama(), tmp_path / "dist", fmt="torch_dist")
    (tmp_path / "dist" / "iter_0000001" / ".metadata").write_bytes(pickle.dumps({"x": _Evil()}))
    result = cli("run", str(tmp_path / "dist"), str(tmp_path / "out"), "--intermediate-size", "48")
    assert result.returncode == 2 and "builtins.print" in result.stderr and "allowlist" in result.stderr
    assert "pickled code ran" not in result.stdout + result.stderr and not (tmp_path / "out").exists()


def test_nemo2_weights_folder_with_module_prefix(llama, tmp_path):
    """NeMo 2 layout: ROOT/weights/ (keys under module.), no args in common.pt, sizes in context/model.yaml."""
    dist = _dist_copy(llama, tmp_path, lambda k: "module." + k)  # the default llama(): untied float32
    root = tmp_path / "nemo"
    root.mkdir()
    (dist / "iter_0000001").rename(root / "weights")
    torch.save({}, root / "weights" / "common.pt")
    result = cli("megatron", "import", str(root), str(tmp_path / "no-context"))
    assert result.returncode == 2 and "num_attention_heads" in result.stderr
    (root / "context").mkdir()
    (root / "context" / "model.yaml").write_text(
        "_target_: nemo.collections.llm.gpt.model.llama.LlamaModel\nconfig:\n"
        "  _target_: nemo.collections.llm.gpt.model.llama.LlamaConfig\n  num_layers: 3\n  hidden_size: 64\n"
        "  ffn_hidden_size: 96\n  num_attention_heads: 8\n  num_query_groups: 4\n  kv_channels: 8\n"
        "  layernorm_epsilon: 1.0e-06\n  share_embeddings_and_output_weights: false\n")
    import_megatron(root, tmp_path / "hf", vocab_size=100)
    assert hf_tensors(tmp_path / "hf") == hf_tensors(llama(False, "float32"))


def test_distributed_optimizer_rank_folder_without_model_is_refused(llama, tmp_path):
    export_hf(llama(), tmp_path / "meg", tp=2)
    for rank in (0, 1):
        folder = tmp_path / f"meg/iter_0000001/mp_rank_0{rank}"
        (folder / "model_optim_rng.pt").rename(folder / "distrib_optim.pt")
    result = cli("run", str(tmp_path / "meg"), str(tmp_path / "out"), "--intermediate-size", "48")
    assert result.returncode == 2 and "distributed-optimizer" in result.stderr and not (tmp_path / "out").exists()
