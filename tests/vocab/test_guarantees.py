"""The guarantees of vocabulary pruning, checked against the original tokenizers as oracles."""

from __future__ import annotations

import json

import pytest
import sentencepiece
from corpus_text import UNSEEN, held_out_lines
from tokenizers import Tokenizer
from vocab_fixtures import KINDS, Pruned

from prune_surgery.vocab import id_map

LOSSLESS = ("spm_bpe", "spm_unigram", "bytelevel")


def _pairs(p: Pruned) -> list[tuple[str, object, object]]:
    """(name, old encode, new encode) for each tokenizer of the folder; encode(text) -> ids."""
    pairs = []
    old_hf = Tokenizer.from_file(str(p.src / "tokenizer.json"))
    new_hf = Tokenizer.from_file(str(p.out / "tokenizer.json"))
    pairs.append(("tokenizer.json", old_hf, new_hf))
    if (p.src / "tokenizer.model").is_file():
        old_sp = sentencepiece.SentencePieceProcessor(model_file=str(p.src / "tokenizer.model"))
        new_sp = sentencepiece.SentencePieceProcessor(model_file=str(p.out / "tokenizer.model"))
        pairs.append(("tokenizer.model", old_sp, new_sp))
    return pairs


def _encode(tok: object, text: str) -> list[int]:
    if isinstance(tok, Tokenizer):
        return tok.encode(text, add_special_tokens=False).ids
    return tok.encode(text)  # type: ignore[attr-defined]


def _decode(tok: object, ids: list[int]) -> str:
    if isinstance(tok, Tokenizer):
        return tok.decode(ids, skip_special_tokens=False)
    return tok.decode(ids)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
def test_covered_lines_tokenize_identically_through_the_map(pruned: dict[str, Pruned], kind: str) -> None:
    p = pruned[kind]
    mapping = id_map(p.kept)
    for name, old, new in _pairs(p):
        covered = uncovered = 0
        for line in held_out_lines():
            before = _encode(old, line)
            after = _encode(new, line)
            if all(i in mapping for i in before):
                covered += 1
                assert after == [mapping[i] for i in before], (name, line)
            else:
                uncovered += 1
        # the oracle must bite: plenty of lines of each sort
        assert covered >= 40 and uncovered >= 40, (name, covered, uncovered)


@pytest.mark.parametrize("kind", LOSSLESS)
def test_every_line_round_trips_and_ids_stay_in_range(pruned: dict[str, Pruned], kind: str) -> None:
    p = pruned[kind]
    lines = held_out_lines()
    assert any(u in " ".join(lines) for u in UNSEEN)
    for name, old, new in _pairs(p):
        for line in lines:
            ids = _encode(new, line)
            assert ids and max(ids) < len(p.kept), (name, line)
            assert _decode(new, ids) == line, (name, line)
            assert _decode(old, _encode(old, line)) == line  # identity normalization: the oracle is the text


def test_unseen_characters_go_through_bytes(pruned: dict[str, Pruned]) -> None:
    p = pruned["spm_bpe"]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(p.out / "tokenizer.model"))
    pieces = sp.encode("🙂 ひらがな", out_type=str)
    assert "<0xF0>" in pieces and sp.decode(sp.encode("🙂 ひらがな")) == "🙂 ひらがな"


def test_wordpiece_ids_stay_in_range_and_unknown_words_become_unk(pruned: dict[str, Pruned]) -> None:
    p = pruned["wordpiece"]
    new = Tokenizer.from_file(str(p.out / "tokenizer.json"))
    unk = new.token_to_id("[UNK]")
    assert unk == id_map(p.kept)[Tokenizer.from_file(str(p.src / "tokenizer.json")).token_to_id("[UNK]")]
    for line in held_out_lines():
        ids = new.encode(line).ids  # with [CLS] ... [SEP] from the remapped post-processor
        assert max(ids) < len(p.kept)
        assert new.id_to_token(ids[0]) == "[CLS]" and new.id_to_token(ids[-1]) == "[SEP]"
    assert unk in new.encode("def zzzyqx(): pass", add_special_tokens=False).ids


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_loads_the_rewritten_folder(pruned: dict[str, Pruned], kind: str) -> None:
    transformers = pytest.importorskip("transformers")
    p = pruned[kind]
    auto = transformers.AutoTokenizer.from_pretrained(str(p.out))
    fast = Tokenizer.from_file(str(p.out / "tokenizer.json"))
    for line in held_out_lines()[:80]:
        assert auto.encode(line, add_special_tokens=False) == fast.encode(line, add_special_tokens=False).ids
    config = json.loads((p.out / "tokenizer_config.json").read_text())
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        assert auto.convert_ids_to_tokens(int(key)) == entry["content"]
    assert len(auto) <= len(p.kept)


def test_sentencepiece_and_tokenizer_json_twins_still_agree(pruned: dict[str, Pruned]) -> None:
    for kind in ("spm_bpe", "spm_unigram"):
        p = pruned[kind]
        sp = sentencepiece.SentencePieceProcessor(model_file=str(p.out / "tokenizer.model"))
        hf = Tokenizer.from_file(str(p.out / "tokenizer.json"))
        for line in held_out_lines():
            assert sp.encode(line) == hf.encode(line, add_special_tokens=False).ids, (kind, line)
