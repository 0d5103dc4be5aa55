"""The kept set of a BPE tokenizer is closed under merges; without the closure, pruning breaks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from corpus_text import held_out_lines
from tokenizers import Tokenizer
from vocab_fixtures import Pruned, write_output

from prune_surgery.errors import TokenizerError
from prune_surgery.vocab import build_keep_vocab, check_kept_set, id_map
from prune_surgery.vocab.closure import parse_merge
from prune_surgery.vocab.files import find_tokenizer_files
from prune_surgery.vocab.hfjson import rewrite_tokenizer_json_text
from prune_surgery.vocab.specials import always_kept

BPE_KINDS = ("spm_bpe", "bytelevel", "bpe_suffix")


@pytest.mark.parametrize("kind", BPE_KINDS)
def test_every_kept_token_is_still_built_by_the_pruned_merges(pruned: dict[str, Pruned], kind: str) -> None:
    p = pruned[kind]
    old = Tokenizer.from_file(str(p.src / "tokenizer.json"))
    new = Tokenizer.from_file(str(p.out / "tokenizer.json"))
    mapping = id_map(p.kept)
    suffix = json.loads((p.src / "tokenizer.json").read_text())["model"]["end_of_word_suffix"] or ""
    built = 0
    for token, old_id in old.get_vocab(with_added_tokens=False).items():
        if old_id not in mapping or len(token) < 2 or not token.endswith(suffix):
            continue
        word = token[: len(token) - len(suffix)]  # the model adds the suffix back to a whole word
        if [t.id for t in old.model.tokenize(word)] != [old_id]:
            continue  # the original never builds it from its characters either
        assert [t.id for t in new.model.tokenize(word)] == [mapping[old_id]], token
        built += 1
    assert built > 100


@pytest.mark.parametrize("kind", BPE_KINDS)
def test_pruned_merges_only_name_kept_tokens(pruned: dict[str, Pruned], kind: str) -> None:
    p = pruned[kind]
    model = json.loads((p.out / "tokenizer.json").read_text())["model"]
    vocab = model["vocab"]
    assert model["merges"]
    for entry in model["merges"]:
        left, right = parse_merge(entry)
        assert left in vocab and right in vocab and left + right in vocab


@pytest.mark.parametrize("kind", BPE_KINDS)
def test_closure_is_reported(pruned: dict[str, Pruned], kind: str) -> None:
    keep = pruned[kind].keep
    before = {int(i) for i in keep["counts"]} | set(keep["always_kept"])  # min count 1: every counted id
    assert before < set(keep["vocab"])
    assert keep["closure_added"] == len(keep["vocab"]) - len(before) > 0


def test_legacy_string_merges_are_pruned_the_same(
    pruned: dict[str, Pruned], corpus_files: dict[str, Path], tmp_path: Path
) -> None:
    """Older tokenizer.json files (Qwen2, Llama) write merges as "a b" strings."""
    p = pruned["bytelevel"]
    src = tmp_path / "src"
    shutil.copytree(p.src, src)
    data = json.loads((src / "tokenizer.json").read_text())
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    (src / "tokenizer.json").write_text(json.dumps(data))
    keep = build_keep_vocab(src, [corpus_files["domain"]])
    assert keep["vocab"] == p.kept and keep["closure_added"] == p.keep["closure_added"]
    write_output(src, tmp_path / "out", keep["vocab"])
    merges = json.loads((tmp_path / "out" / "tokenizer.json").read_text())["model"]["merges"]
    pairs = json.loads((p.out / "tokenizer.json").read_text())["model"]["merges"]
    assert merges == [" ".join(pair) for pair in pairs]


def test_no_closure_for_unigram_and_wordpiece(pruned: dict[str, Pruned]) -> None:
    assert pruned["spm_unigram"].keep["closure_added"] == 0
    assert pruned["wordpiece"].keep["closure_added"] == 0


def _naive_kept(p: Pruned) -> list[int]:
    """What naive pruning keeps: the counted tokens and the specials, merge parents dropped."""
    counted = {int(i) for i in p.keep["counts"]}
    return sorted(counted | set(always_kept(find_tokenizer_files(p.src))))


@pytest.mark.parametrize("kind", BPE_KINDS)
def test_dropping_merge_parents_is_refused(pruned: dict[str, Pruned], kind: str, tmp_path: Path) -> None:
    p = pruned[kind]
    naive = _naive_kept(p)
    assert len(naive) < len(p.kept)
    with pytest.raises(TokenizerError, match="closed under merges"):
        check_kept_set(p.src, naive)
    with pytest.raises(TokenizerError, match="closed under merges"):
        write_output(p.src, tmp_path / "out", naive)


@pytest.mark.parametrize("kind", BPE_KINDS)
def test_without_the_closure_covered_lines_change(pruned: dict[str, Pruned], kind: str) -> None:
    """Why the closure exists: naive pruning tokenizes covered lines differently."""
    p = pruned[kind]
    naive = _naive_kept(p)
    old = Tokenizer.from_file(str(p.src / "tokenizer.json"))
    new = Tokenizer.from_str(rewrite_tokenizer_json_text((p.src / "tokenizer.json").read_text(), naive))
    mapping = id_map(naive)
    changed = 0
    for line in held_out_lines():
        before = old.encode(line, add_special_tokens=False).ids
        if all(i in mapping for i in before):
            changed += new.encode(line, add_special_tokens=False).ids != [mapping[i] for i in before]
    assert changed > 0
