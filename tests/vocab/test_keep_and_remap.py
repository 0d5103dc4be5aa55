"""keep-vocab.json / prune_surgery.json loading and config special-token remapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prune_surgery.errors import SpecError, TokenizerError
from prune_surgery.vocab import load_keep_vocab, remap_token_ids


def test_load_keep_vocab_from_both_files(tmp_path: Path) -> None:
    keep = tmp_path / "keep-vocab.json"
    keep.write_text(json.dumps({"vocab": [0, 1, 5, 9], "vocab_size": 10, "counts": {"5": 3}}))
    assert load_keep_vocab(keep) == [0, 1, 5, 9]
    record = tmp_path / "prune_surgery.json"
    record.write_text(json.dumps({"keep": {"vocab": [0, 2, 3], "hidden": [1]}}))
    assert load_keep_vocab(record) == [0, 2, 3]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"vocab": [0, 3, 2]}, "sorted and unique"),
        ({"vocab": [0, 1, 1]}, "sorted and unique"),
        ({"vocab": [0, "1"]}, "not a token id"),
        ({"vocab": [-1, 0]}, "not a token id"),
        ({"vocab": []}, "non-empty"),
        ({"vocab": [0, 12], "vocab_size": 10}, "only 10 ids"),
        ({"ids": [0, 1]}, "neither"),
    ],
)
def test_load_keep_vocab_rejects_bad_files(tmp_path: Path, content: dict, message: str) -> None:
    path = tmp_path / "keep-vocab.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SpecError, match=message):
        load_keep_vocab(path)


def test_load_keep_vocab_missing_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_keep_vocab(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{vocab: [")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_keep_vocab(tmp_path / "bad.json")


def test_remap_token_ids_ints_lists_and_nested() -> None:
    kept = [0, 1, 2, 7, 100, 151643, 151645]
    cfg = {
        "vocab_size": 151936,
        "bos_token_id": 151643,
        "eos_token_id": [151645, 151643],
        "pad_token_id": None,
        "decoder_start_token_id": -1,
        "text_config": {"eos_token_id": 2, "sep_token_id": 7, "hidden_size": 100},
        "hidden_size": 100,
    }
    out = remap_token_ids(cfg, kept)
    assert out["bos_token_id"] == 5 and out["eos_token_id"] == [6, 5]
    assert out["pad_token_id"] is None and out["decoder_start_token_id"] == -1
    assert out["text_config"] == {"eos_token_id": 2, "sep_token_id": 3, "hidden_size": 100}
    assert out["vocab_size"] == 151936 and out["hidden_size"] == 100  # not ids: untouched
    assert cfg["eos_token_id"] == [151645, 151643]  # the input is not modified


def test_remap_token_ids_refuses_a_dropped_special() -> None:
    with pytest.raises(TokenizerError, match="pad_token_id.*id 4"):
        remap_token_ids({"pad_token_id": 4}, [0, 1, 2])
