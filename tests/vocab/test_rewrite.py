"""Rewriting tokenizer files: what is always kept, what is refused, what the files say afterwards."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import sentencepiece
from tokenizers import Tokenizer
from vocab_fixtures import KINDS, Pruned, write_output

from prune_surgery.errors import TokenizerError
from prune_surgery.vocab import id_map, rewrite_tokenizer_files
from prune_surgery.vocab.files import byte_piece, bytes_to_unicode


def _ids(folder: Path) -> dict[str, int]:
    return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)


def test_bytes_and_specials_are_always_kept(pruned: dict[str, Pruned]) -> None:
    for kind in ("spm_bpe", "spm_unigram"):
        ids = _ids(pruned[kind].src)
        kept = set(pruned[kind].kept)
        assert {ids[byte_piece(b)] for b in range(256)} <= kept
        assert {ids[t] for t in ("<unk>", "<s>", "</s>", "<pad>", "<sep>")} <= kept
    ids = _ids(pruned["bytelevel"].src)
    kept = set(pruned["bytelevel"].kept)
    assert {ids[c] for c in bytes_to_unicode().values()} <= kept
    assert {ids[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")} <= kept
    ids = _ids(pruned["wordpiece"].src)
    assert {ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")} <= set(pruned["wordpiece"].kept)


def test_unigram_keeps_its_lowest_scoring_piece(pruned: dict[str, Pruned]) -> None:
    p = pruned["spm_unigram"]
    vocab = json.loads((p.src / "tokenizer.json").read_text())["model"]["vocab"]
    lowest = min(range(len(vocab)), key=lambda i: vocab[i][1])
    assert lowest in p.keep["always_kept"] and p.keep["counts"].get(str(lowest)) is None


@pytest.mark.parametrize("kind", KINDS)
def test_side_files_are_remapped(pruned: dict[str, Pruned], kind: str) -> None:
    p = pruned[kind]
    mapping = id_map(p.kept)
    old = json.loads((p.src / "tokenizer_config.json").read_text())
    new = json.loads((p.out / "tokenizer_config.json").read_text())
    new_ids = _ids(p.out)
    for key, entry in (old.get("added_tokens_decoder") or {}).items():
        assert new["added_tokens_decoder"][str(mapping[int(key)])] == entry
        assert new_ids[entry["content"]] == mapping[int(key)]
    if (p.src / "vocab.json").is_file():
        vocab = json.loads((p.out / "vocab.json").read_text())
        assert {t: i for t, i in new_ids.items() if t in vocab} == vocab
        merges = [line for line in (p.out / "merges.txt").read_text().splitlines() if not line.startswith("#")]
        tokenizer_merges = json.loads((p.out / "tokenizer.json").read_text())["model"]["merges"]
        assert len(merges) == len(tokenizer_merges)
    if (p.src / "vocab.txt").is_file():
        lines = (p.out / "vocab.txt").read_text().splitlines()
        assert {t: i for i, t in enumerate(lines)} == {t: i for t, i in new_ids.items()}


def test_config_ids_are_remapped(pruned: dict[str, Pruned]) -> None:
    p = pruned["bytelevel"]
    mapping = id_map(p.kept)
    old = json.loads((p.src / "generation_config.json").read_text())
    new = json.loads((p.out / "generation_config.json").read_text())
    assert new["eos_token_id"] == [mapping[i] for i in old["eos_token_id"]]
    assert new["pad_token_id"] == mapping[old["pad_token_id"]]
    config = json.loads((p.out / "config.json").read_text())
    assert config["vocab_size"] == len(p.kept)
    assert Tokenizer.from_file(str(p.out / "tokenizer.json")).id_to_token(config["eos_token_id"]) == "<|im_end|>"


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_everything_changes_nothing(tokenizer_dirs: dict[str, Path], kind: str, tmp_path: Path) -> None:
    src = tokenizer_dirs[kind]
    size = json.loads((src / "config.json").read_text())["vocab_size"]  # Qwen style: past the tokenizer
    written = rewrite_tokenizer_files(src, tmp_path, list(range(size)), size)
    for name in written:
        if name.endswith(".json"):
            assert json.loads((tmp_path / name).read_text()) == json.loads((src / name).read_text()), name
        elif name == "tokenizer.model":
            old = sentencepiece.SentencePieceProcessor(model_file=str(src / name))
            new = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / name))
            assert [old.id_to_piece(i) for i in range(old.get_piece_size())] == [
                new.id_to_piece(i) for i in range(new.get_piece_size())
            ]
        else:
            assert (tmp_path / name).read_text() == (src / name).read_text(), name


def test_padded_vocab_size_is_accepted(pruned: dict[str, Pruned], tmp_path: Path) -> None:
    p = pruned["spm_bpe"]
    write_output(p.src, tmp_path, p.kept, pad_to=64)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= len(p.kept)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert processor.get_piece_size() == len(p.kept)
    with pytest.raises(TokenizerError, match="smaller than"):
        rewrite_tokenizer_files(p.src, tmp_path, p.kept, len(p.kept) - 1)


def _without(kept: list[int], drop: int) -> list[int]:
    return [i for i in kept if i != drop]


@pytest.mark.parametrize(
    ("kind", "token", "message"),
    [
        ("spm_bpe", "<0x41>", "byte fallback"),
        ("spm_unigram", "<0xF0>", "byte fallback"),
        ("spm_bpe", "<unk>", "unknown|named special"),
        ("bytelevel", "Ġ", "byte-level base"),
        ("bytelevel", "<|im_end|>", "named special"),
        ("wordpiece", "[UNK]", "unknown|named special"),
    ],
)
def test_kept_sets_that_break_the_tokenizer_are_refused(
    pruned: dict[str, Pruned], kind: str, token: str, message: str, tmp_path: Path
) -> None:
    p = pruned[kind]
    kept = _without(p.kept, _ids(p.src)[token])
    with pytest.raises(TokenizerError, match=message):
        rewrite_tokenizer_files(p.src, tmp_path, kept, len(kept))
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_config_special_id_that_was_dropped_is_refused(pruned: dict[str, Pruned]) -> None:
    from prune_surgery.vocab import remap_token_ids

    with pytest.raises(TokenizerError, match="eos_token_id"):
        remap_token_ids({"text_config": {"eos_token_id": [2, 5]}}, [0, 1, 2, 3])


def _tiktoken_file(path: Path, tokens: list[bytes]) -> None:
    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))


def test_tiktoken_alone_is_refused_with_an_explanation(tmp_path: Path) -> None:
    _tiktoken_file(tmp_path / "tokenizer.model", [bytes([b]) for b in range(256)] + [b"th", b"the"])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TokenizerError, match="tiktoken.*single-byte tokens.*tokenizer.json"):
        rewrite_tokenizer_files(tmp_path, out, [0, 1, 2], 3)


def test_tiktoken_with_tokenizer_json_is_pruned_as_byte_level_bpe(pruned: dict[str, Pruned], tmp_path: Path) -> None:
    p = pruned["bytelevel"]
    src = tmp_path / "src"
    shutil.copytree(p.src, src)
    _tiktoken_file(src / "tokenizer.model", [bytes([b]) for b in range(256)])
    out = tmp_path / "out"
    written = write_output(src, out, p.kept)
    assert "tokenizer.json" in written and "tokenizer.model" not in written
    assert not (out / "tokenizer.model").exists()
    assert (
        Tokenizer.from_file(str(out / "tokenizer.json")).encode("the model").ids
        == Tokenizer.from_file(str(p.out / "tokenizer.json")).encode("the model").ids
    )


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(b"\x00\x01 not a protobuf \xff" * 4)
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        rewrite_tokenizer_files(tmp_path, tmp_path, [0], 1)
    (tmp_path / "tokenizer.model").unlink()
    with pytest.raises(TokenizerError, match="no tokenizer"):
        rewrite_tokenizer_files(tmp_path, tmp_path, [0], 1)
