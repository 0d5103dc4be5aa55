"""Our rank files against megatron-core's own GPTModel (local layer spec, TP=1).

Always: keys and shapes equal the state_dict() that megatron-core 0.16.1's GPTModel declares
for the tiny config (recorded in data/, generated with that version).  When a Python with
megatron-core is available (MCORE_PYTHON, default /tmp/mcore-venv/bin/python), the rank
file is also loaded there with strict=True and its logits are compared with transformers'.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import transformers

from prune_surgery.megatron import export_hf, import_megatron, prune_megatron, reshard_megatron

DATA = Path(__file__).parent / "data" / "mcore_gpt_local_state_dict.json"
RANK0 = "iter_0000001/mp_rank_00/model_optim_rng.pt"
TOKENS = [[1, 5, 7, 99, 3, 42, 17, 8, 64, 0, 31, 2]]
MCORE_PYTHON = os.environ.get("MCORE_PYTHON", str(Path(__file__).resolve().parents[2] / ".venv-mcore" / "bin" / "python"))


def _state(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("tied", [False, True])
def test_keys_and_shapes_match_mcore_gpt_model(llama, tmp_path, tied):
    declared = json.loads(DATA.read_text())["state_dict"]["tied" if tied else "untied"]
    export_hf(llama(tied, "float32"), tmp_path / "meg", tp=1, spec="local")
    model = _state(tmp_path / "meg" / RANK0)
    assert {k: list(v.shape) if v is not None else None for k, v in model.items()} == declared


def test_te_names_are_the_local_names_under_mcores_key_map(llama, tmp_path):
    """megatron-core's local spec declares sharded_state_dict_keys_map {"input_layernorm.":
    "self_attention.linear_qkv.layer_norm_", "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}:
    the TE layout is the local one under that map (TE modules add their own _extra_state)."""
    declared = json.loads(DATA.read_text())["state_dict"]["untied"]
    export_hf(llama(False, "float32"), tmp_path / "meg", tp=1, spec="te")
    keys_map = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_", "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}
    expected = {}
    for key, shape in declared.items():
        for old, new in keys_map.items():
            key = key.replace(old, new)
        expected[key] = shape
    expected.update({f"decoder.layers.{i}.self_attention.core_attention._extra_state": None for i in range(3)})
    model = _state(tmp_path / "meg" / RANK0)
    assert {k: list(v.shape) if v is not None else None for k, v in model.items()} == expected


def _mcore_logits(rank_file: Path, tmp_path: Path) -> torch.Tensor:
    if not Path(MCORE_PYTHON).exists():
        pytest.skip(f"no megatron-core Python at {MCORE_PYTHON} (set MCORE_PYTHON; see tests/megatron/README)")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(TOKENS))
    out = tmp_path / "logits.npy"
    script = Path(__file__).parent / "mcore_forward.py"
    done = subprocess.run([MCORE_PYTHON, str(script), str(rank_file), str(tokens), str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    import numpy as np

    return torch.from_numpy(np.load(out))


def _hf_logits(folder: Path) -> torch.Tensor:
    model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits


@pytest.mark.parametrize("tied", [False, True])
def test_mcore_logits_equal_transformers(llama, tmp_path, tied):
    src = llama(tied, "float32")
    export_hf(src, tmp_path / "meg", tp=1, spec="local")
    got = _mcore_logits(tmp_path / "meg" / RANK0, tmp_path)
    want = _hf_logits(src)
    assert got.shape == (1, len(TOKENS[0]), 128)
    torch.testing.assert_close(got[..., :100], want, rtol=1e-4, atol=1e-5)


def test_pruned_megatron_runs_in_mcore_like_its_hf_import(llama, tmp_path):
    """Prune at TP=2, reshard to TP=1: mcore's logits equal transformers' on the imported model."""
    keep = {"layers": [0, 2], "hidden": list(range(0, 64, 2)), "kv_heads": {"0": [1, 2], "2": [0, 3]},
            "heads": {"0": [2, 5], "2": [0, 6]}, "ffn": {"0": list(range(0, 96, 2)), "2": list(range(1, 96, 2))}}
    export_hf(llama(False, "float32"), tmp_path / "meg", tp=2)
    prune_megatron(tmp_path / "meg", tmp_path / "pruned", keep)
    reshard_megatron(tmp_path / "pruned", tmp_path / "tp1", tp=1, spec="local")
    import_megatron(tmp_path / "tp1", tmp_path / "hf")
    got = _mcore_logits(tmp_path / "tp1" / RANK0, tmp_path)
    torch.testing.assert_close(got[..., :100], _hf_logits(tmp_path / "hf"), rtol=1e-4, atol=1e-5)
