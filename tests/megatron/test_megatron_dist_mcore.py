"""torch_dist against megatron-core's own dist_checkpointing (run in .venv-mcore, see README).

- a checkpoint megatron-core saves (Megatron-LM's keys, and NeMo 2's ``module.`` prefix) is read
  by us without megatron and imported to the exact HF tensors it was made from;
- what we write (export, prune) is loaded by ``dist_checkpointing.load`` into a ``GPTModel``
  built from our ``train_args.sh`` flags, ``load_state_dict(strict=True)``, at TP 1 and 2: every
  rank holds the tensors of our TP-rank export, and at TP 1 the logits equal transformers'.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from megatron_fixtures import hf_tensors
from test_megatron_dist import _rank_tensors, cli
from test_megatron_mcore import MCORE_PYTHON, TOKENS, _hf_logits

from prune_surgery.megatron import distmeta, export_hf, import_megatron

SCRIPT = Path(__file__).parent / "mcore_dist.py"


def mcore(*args: str) -> None:
    if not Path(MCORE_PYTHON).exists():
        pytest.skip(f"no megatron-core Python at {MCORE_PYTHON} (set MCORE_PYTHON; see tests/megatron/README)")
    done = subprocess.run([MCORE_PYTHON, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize(("tied", "dtype", "prefix", "tp"), [(False, "float32", "", 2), (True, "bfloat16", "module.", 1)])
def test_we_read_what_megatron_core_saves(llama, tmp_path, tied, dtype, prefix, tp):
    """Saved by megatron-core at TP 2 (each layer's tensors in one chunk per rank) or TP 1 with NeMo's prefix."""
    src = llama(tied, dtype)
    export_hf(src, tmp_path / "legacy", tp=tp, spec="local")
    root = tmp_path / ("nemo" if prefix else "megatron")
    dist = root / ("weights" if prefix else "iter_0000001")
    extra = ["--prefix", prefix] if prefix else []
    mcore("save", str(tmp_path / "legacy/iter_0000001"), str(dist), *extra)
    if not prefix:
        (root / "latest_checkpointed_iteration.txt").write_text("1\n")
        chunks = distmeta.read_metadata(dist).tensors["decoder.layers.mlp.linear_fc1.weight"].chunks
        assert len(chunks) == 3 * 2 * tp and len({c.file for c in chunks}) == tp  # gate and up of each rank, per layer
    import_megatron(root, tmp_path / "hf", vocab_size=100)
    assert hf_tensors(tmp_path / "hf") == hf_tensors(src)


def _load(ckpt: Path, tp: int, tmp_path: Path, train_args: Path | None = None) -> list[dict]:
    out = tmp_path / f"loaded-tp{tp}"
    mcore("load", str(ckpt / "iter_0000001"), str(train_args or ckpt / "train_args.sh"), str(out), str(tp))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(tp)]


def _at_tp(ckpt: Path, tp: int, tmp_path: Path) -> Path:
    """train_args.sh edited to load at another TP, as the README says: the TP flag, and the
    padding unit that keeps the padded vocabulary (padded / TP)."""
    record = json.loads((ckpt / "train_args.json").read_text())
    flags = list(record["flags"])
    flags[flags.index("--tensor-model-parallel-size") + 1] = str(tp)
    flags[flags.index("--make-vocab-size-divisible-by") + 1] = str(record["args"]["padded_vocab_size"] // tp)
    folder = tmp_path / f"args-tp{tp}"
    folder.mkdir()
    (folder / "train_args.sh").write_text(" ".join(flags))
    (folder / "train_args.json").write_text(json.dumps(record))
    return folder / "train_args.sh"


def _assert_ranks_equal(loaded: list[dict], legacy: Path, tp: int) -> None:
    expected = _rank_tensors(legacy, tp)
    for rank, (got, want) in enumerate(zip(loaded, expected)):
        assert set(got["tensors"]) == set(want), rank
        for key, tensor in want.items():
            assert torch.equal(got["tensors"][key], tensor), (rank, key)


@pytest.mark.parametrize("tp", [1, 2])
def test_megatron_core_loads_our_torch_dist_export(llama, tmp_path, tp):
    """Exported at TP 1, loaded at TP 1 and (with the README's two flag edits) at TP 2."""
    src = llama(False, "float32")
    export_hf(src, tmp_path / "dist", fmt="torch_dist")
    export_hf(src, tmp_path / "legacy", tp=tp, spec="local", divisible_by=128 // tp)
    loaded = _load(tmp_path / "dist", tp, tmp_path, None if tp == 1 else _at_tp(tmp_path / "dist", tp, tmp_path))
    _assert_ranks_equal(loaded, tmp_path / "legacy", tp)
    if tp == 1:
        logits = torch.load(tmp_path / "loaded-tp1" / "logits.pt", weights_only=True)
        assert logits.shape == (1, len(TOKENS[0]), 128)
        torch.testing.assert_close(logits[..., :100], _hf_logits(src), rtol=1e-4, atol=1e-5)


def test_pruned_torch_dist_runs_in_megatron_core(llama, tmp_path):
    """prune-surgery run on a tied torch_dist checkpoint, --balance 2: megatron-core loads it at TP 2
    with train_args.sh as written, and each rank holds what our TP-2 export of the pruned model holds
    (that pruning equals pruning the HF model: test_megatron_dist; logits: the export test above)."""
    src = llama(True, "float32")
    assert cli("megatron", "export", str(src), str(tmp_path / "dist"), "--format", "torch_dist").returncode == 0
    result = cli("run", str(tmp_path / "dist"), str(tmp_path / "pruned"), "-q", "--hidden-size", "48",
                 "--num-attention-heads", "4", "--num-key-value-heads", "2", "--intermediate-size", "64",
                 "--drop-layers", "1", "--balance", "2")
    assert result.returncode == 0, result.stderr
    pruned = tmp_path / "pruned"
    import_megatron(pruned, tmp_path / "hf")
    export_hf(tmp_path / "hf", tmp_path / "legacy2", tp=2, spec="local", divisible_by=64)
    _assert_ranks_equal(_load(pruned, 2, tmp_path), tmp_path / "legacy2", 2)
