"""Tiny llama outputs (untied, tied; vocabulary-pruned SentencePiece and byte-level BPE) become GGUF files.

Oracles: the GGUF is read back with the `gguf` package; its tokenizer metadata (tokens, scores,
merges, pre-tokenizer, special ids) must equal the pruned tokenizer's, and its tensors the
pruned checkpoint's (f32, so bit for bit).  `transformers` then loads the GGUF's tokenizer and
must tokenize held-out text exactly as the pruned tokenizer does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent))
from gguf_fixtures import GGUF_SPECIAL, SPECIAL_KEYS, cli, hf_merges, hf_tokens, read_gguf, tiny_with_tokenizer  # noqa: E402

BYTE = 6  # llama.cpp's token type of a byte-fallback piece


def prune(src: Path, out: Path, corpus: Path | None, *options: str) -> dict:
    """`vocab count` (when a corpus is given) and `run` through the CLI; returns OUT's record."""
    args = list(options)
    if corpus is not None:
        keep = out.parent / f"{out.name}-keep.json"
        done = cli("vocab", "count", str(src), "--corpus", str(corpus), "--top-k", "200", "-o", str(keep))
        assert done.returncode == 0, done.stderr
        args += ["--keep-vocab", str(keep)]
    done = cli("run", str(src), str(out), "-q", *args)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "prune_surgery.json").read_text())


def convert(out: Path, gguf: Path, outtype: str = "f32") -> tuple[dict, dict]:
    done = cli("gguf", str(out), str(gguf), "--outtype", outtype)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [p for p in gguf.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    return read_gguf(gguf)


def check_tensors(out: Path, fields: dict, tensors: dict, tied: bool) -> None:
    """Every GGUF tensor a llama.cpp reader needs equals the pruned checkpoint's (f32: exactly)."""
    config = json.loads((out / "config.json").read_text())
    weights = {k: v.astype(np.float32) for k, v in load_file(out / "model.safetensors").items()}
    assert fields["llama.block_count"] == config["num_hidden_layers"]
    assert fields["llama.embedding_length"] == config["hidden_size"]
    assert fields["llama.vocab_size"] == config["vocab_size"]
    np.testing.assert_array_equal(tensors["token_embd.weight"], weights["model.embed_tokens.weight"])
    assert ("output.weight" in tensors) is not tied
    if not tied:
        np.testing.assert_array_equal(tensors["output.weight"], weights["lm_head.weight"])
    last = config["num_hidden_layers"] - 1
    np.testing.assert_array_equal(tensors[f"blk.{last}.ffn_down.weight"], weights[f"model.layers.{last}.mlp.down_proj.weight"])
    assert len(tensors) == 2 + (not tied) + 9 * config["num_hidden_layers"]


def check_special_ids(out: Path, fields: dict, record: dict, src: Path) -> None:
    """bos/eos/pad/unk of the GGUF are the pruned config's, which are the source's ids mapped old -> new."""
    config, source = json.loads((out / "config.json").read_text()), json.loads((src / "config.json").read_text())
    kept = record["keep"].get("vocab")
    for key in SPECIAL_KEYS:
        if isinstance(config.get(key), int):
            assert fields[f"tokenizer.ggml.{GGUF_SPECIAL[key]}"] == config[key]
            assert config[key] == (kept.index(source[key]) if kept else source[key])


def check_tokenizes_like(out: Path, gguf: Path, held_out: Path) -> None:
    """transformers' tokenizer built from the GGUF encodes held-out text as the pruned tokenizer does."""
    from transformers import AutoTokenizer

    from_gguf = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    pruned = AutoTokenizer.from_pretrained(out)
    lines = held_out.read_text(encoding="utf-8").splitlines()[:80]
    assert [from_gguf.encode(t, add_special_tokens=False) for t in lines] == \
        [pruned.encode(t, add_special_tokens=False) for t in lines]


def check_tokenizes_like_source(src_gguf: Path, gguf: Path, kept: list[int], held_out: Path) -> None:
    """Through the id map, the pruned GGUF's tokenizer encodes every covered line as the source GGUF's does.

    (transformers rebuilds a SentencePiece tokenizer from GGUF with its own whitespace rules, so the
    comparison is GGUF against GGUF, source against pruned.)
    """
    from transformers import AutoTokenizer

    before = AutoTokenizer.from_pretrained(src_gguf.parent, gguf_file=src_gguf.name)
    after = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    new_id = {old: new for new, old in enumerate(kept)}
    covered = 0
    for line in held_out.read_text(encoding="utf-8").splitlines():
        ids = before.encode(line, add_special_tokens=False)
        if all(i in new_id for i in ids):
            covered += 1
            assert after.encode(line, add_special_tokens=False) == [new_id[i] for i in ids], line
    assert covered >= 20


def test_sentencepiece_untied_vocab_pruned(tokenizers_for_gguf, gguf_corpus, converter, tmp_path):
    src = tiny_with_tokenizer(tokenizers_for_gguf["spm_bpe"], tmp_path / "src", tied=False)
    out = tmp_path / "out"
    record = prune(src, out, gguf_corpus["count"], "--pad-vocab-to-multiple-of", "64", "--drop-layers", "1",
                   "--hidden-size", "48", "--num-attention-heads", "4", "--num-key-value-heads", "2")
    (tmp_path / "gguf").mkdir()
    fields, tensors = convert(out, tmp_path / "gguf" / "model.gguf")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    size = json.loads((out / "config.json").read_text())["vocab_size"]
    assert sp.vocab_size() == len(record["keep"]["vocab"]) < size  # padded
    assert fields["tokenizer.ggml.model"] == "llama"
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[: sp.vocab_size()] == [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert tokens[sp.vocab_size():] == [f"[PAD{i}]" for i in range(sp.vocab_size(), size)]
    scores = fields["tokenizer.ggml.scores"]
    added = {int(i) for i in json.loads((out / "tokenizer_config.json").read_text())["added_tokens_decoder"]}
    normal = [i for i in range(sp.vocab_size()) if i not in added and not (sp.is_control(i) or sp.is_byte(i))]
    assert len(normal) > 100
    assert [scores[i] for i in normal] == pytest.approx([sp.get_score(i) for i in normal])
    types = fields["tokenizer.ggml.token_type"]
    assert [i for i, t in enumerate(types) if t == BYTE] == [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    check_special_ids(out, fields, record, src)
    check_tensors(out, fields, tensors, tied=False)
    convert(src, tmp_path / "gguf" / "source.gguf")
    check_tokenizes_like_source(tmp_path / "gguf" / "source.gguf", tmp_path / "gguf" / "model.gguf",
                                record["keep"]["vocab"], gguf_corpus["held_out"])


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_byte_level_bpe_vocab_pruned_then_pruned_again(tokenizers_for_gguf, gguf_corpus, converter, tmp_path, tied):
    """SmolLM2's tokenizer, vocabulary-pruned, then pruned again (depth): the pre-tokenizer is still `smollm`."""
    src = tiny_with_tokenizer(tokenizers_for_gguf["smollm2"], tmp_path / "src", tied=tied)
    first, out = tmp_path / "first", tmp_path / "out"
    prune(src, first, gguf_corpus["count"], "--pad-vocab-to-multiple-of", "64")
    record = prune(first, out, None, "--drop-layers", "2", "--intermediate-size", "64")
    assert record["source_tokenizer"] == json.loads((first / "prune_surgery.json").read_text())["source_tokenizer"]
    fields, tensors = convert(out, tmp_path / "model.gguf")
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "smollm"
    size = json.loads((out / "config.json").read_text())["vocab_size"]
    assert fields["tokenizer.ggml.tokens"] == hf_tokens(out / "tokenizer.json", size)
    assert fields["tokenizer.ggml.merges"] == hf_merges(out / "tokenizer.json")
    first_record = json.loads((first / "prune_surgery.json").read_text())
    check_special_ids(first, fields, first_record, src)
    check_tensors(out, fields, tensors, tied=tied)
    check_tokenizes_like(out, tmp_path / "model.gguf", gguf_corpus["held_out"])


def test_byte_level_bpe_width_cut_converts_without_a_record(tokenizers_for_gguf, converter, tmp_path):
    """Vocabulary untouched: nothing is recorded and the converter recognises the tokenizer itself."""
    src = tiny_with_tokenizer(tokenizers_for_gguf["smollm2"], tmp_path / "src", tied=False)
    out = tmp_path / "out"
    record = prune(src, out, None, "--hidden-size", "32", "--num-attention-heads", "4", "--num-key-value-heads", "2")
    assert "source_tokenizer" not in record
    fields, tensors = convert(out, tmp_path / "model.gguf", outtype="f32")
    assert fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.ggml.tokens"] == hf_tokens(out / "tokenizer.json", 49152)
    check_tensors(out, fields, tensors, tied=False)
