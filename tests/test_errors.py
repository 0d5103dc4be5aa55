"""Bad input: a clear one-line error, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import assert_clean_failure, cli

from models import tree_digest





@pytest.fixture
def src(checkpoints, tmp_path) -> Path:
    """A private copy of the llama checkpoint that a test may damage."""
    return Path(shutil.copytree(checkpoints["llama"], tmp_path / "src"))


def _first_shard(src: Path) -> Path:
    return sorted(src.glob("*.safetensors"))[0]


def _rewrite_header(shard: Path, edit) -> None:
    raw = shard.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    shard.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def _first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def truncate(src: Path) -> None:
    shard = _first_shard(src)
    shard.write_bytes(shard.read_bytes()[:-100])


def offsets_outside(src: Path) -> None:
    def edit(h):
        h[_first_tensor(h)]["data_offsets"][1] += 10**9
    _rewrite_header(_first_shard(src), edit)


def overlap(src: Path) -> None:
    def edit(h):
        names = [k for k in h if k != "__metadata__"]
        a, b = sorted(names, key=lambda k: h[k]["data_offsets"][0])[:2]
        size = h[b]["data_offsets"][1] - h[b]["data_offsets"][0]
        h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + size]
    _rewrite_header(_first_shard(src), edit)


def unknown_dtype(src: Path) -> None:
    def edit(h):
        h[_first_tensor(h)]["dtype"] = "Q7"
    _rewrite_header(_first_shard(src), edit)


def index_escapes(src: Path) -> None:
    index = json.loads((src / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../x.safetensors"
    (src / "model.safetensors.index.json").write_text(json.dumps(index))


def missing_shard(src: Path) -> None:
    _first_shard(src).unlink()


def unknown_arch(src: Path) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "mamba9"
    (src / "config.json").write_text(json.dumps(cfg))


def extra_tensor(src: Path) -> None:
    def edit(h):
        name = _first_tensor(h)
        h["model.layers.0.mystery.weight"] = h.pop(name)
    _rewrite_header(_first_shard(src), edit)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    shard = _first_shard(src).name
    name = next(k for k, v in index["weight_map"].items() if v == shard)
    index["weight_map"]["model.layers.0.mystery.weight"] = index["weight_map"].pop(name)
    (src / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("damage,words", [
    (truncate, ["truncated"]),
    (offsets_outside, ["truncated"]),
    (overlap, ["overlap"]),
    (unknown_dtype, ["unknown safetensors dtype", "Q7"]),
    (index_escapes, ["outside the checkpoint folder"]),
    (missing_shard, ["missing"]),
    (unknown_arch, ["mamba9", "supported", "llama"]),
    (extra_tensor, ["mystery", "not described"]),
])
def test_damaged_source_is_refused(src, tmp_path, damage, words):
    damage(src)
    before = tree_digest(src)
    result = cli("run", str(src), str(tmp_path / "out"), "--drop-layers", "1")
    assert_clean_failure(result, *words)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert tree_digest(src) == before


@pytest.mark.parametrize("args,words", [
    (["--hidden-size", "128"], ["larger than the source"]),
    (["--num-attention-heads", "6"], ["not a multiple of num_key_value_heads"]),
    (["--hidden-size", "60"], ["not a multiple of num_attention_heads"]),
    (["--drop-layers", "7"], ["layers 0..3"]),
    (["--drop-layers", "0-3"], ["all 4 layers"]),
    (["--num-key-value-heads", "2"], ["heads per group"]),
    (["--balance", "5", "--intermediate-size", "40"], ["--balance 5"]),
    (["--method", "best"], ["method must be one of"]),
    (["--head-dim", "4"], []),
])
def test_impossible_targets_are_refused(checkpoints, tmp_path, args, words):
    result = cli("plan", str(checkpoints["llama"]), *args)
    if args[0] == "--head-dim":  # not an option at all: a usage error, still exit 2
        assert result.returncode == 2 and "Traceback" not in result.stderr
        return
    assert_clean_failure(result, *words)
    result = cli("run", str(checkpoints["llama"]), str(tmp_path / "out"), *args)
    assert_clean_failure(result, *words)
    assert not (tmp_path / "out").exists()


def test_output_must_be_empty_and_outside_source(checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_clean_failure(cli("run", str(checkpoints["llama"]), str(out), "--drop-layers", "1"), "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    inside = checkpoints["llama"] / "pruned"
    assert_clean_failure(cli("run", str(checkpoints["llama"]), str(inside)), "inside the source")
    assert not inside.exists()
    result = cli("run", str(checkpoints["llama"]), str(out), "--drop-layers", "1", "--overwrite", "--quiet")
    assert result.returncode == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_bad_spec_and_keep_files(checkpoints, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("hidden_size: 48\nwibble: 3\nnum_attention_heads: x\n")
    assert_clean_failure(cli("plan", str(checkpoints["llama"]), "--spec", str(spec)))
    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps({"hidden": [3, 1, 2]}))
    assert_clean_failure(cli("plan", str(checkpoints["llama"]), "--keep", str(keep)), "sorted")
    keep.write_text(json.dumps({"heads": {"0": [0, 1]}}))
    assert_clean_failure(cli("plan", str(checkpoints["llama"]), "--keep", str(keep)), "heads")
    assert_clean_failure(cli("plan", str(tmp_path / "nowhere")), "neither an existing folder")
