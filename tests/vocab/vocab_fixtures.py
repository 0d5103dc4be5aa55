"""Tiny tokenizers trained on the text in corpus_text.py, one checkpoint-like folder per kind.

Each folder has the tokenizer files a Hub checkpoint has (tokenizer.model and/or tokenizer.json,
tokenizer_config.json, special_tokens_map.json, slow vocab files where that family has them)
plus config.json / generation_config.json naming special-token ids.  No weights: the tokenizer
side does not need them.  (A module of its own, not conftest.py: tests import from it, and
tests/conftest.py already owns the name ``conftest``.)
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import sentencepiece
from corpus_text import training_lines
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from prune_surgery.vocab import remap_token_ids, rewrite_tokenizer_files

QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

KINDS = ("spm_bpe", "spm_unigram", "bytelevel", "wordpiece", "bpe_suffix")


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")


def _spm_folder(folder: Path, model_type: str) -> None:
    """A Llama-style folder: SentencePiece model with byte fallback, plus its tokenizer.json twin."""
    from transformers.convert_slow_tokenizer import SpmConverter  # tests only

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_lines()),
        model_writer=buffer,
        model_type=model_type,
        vocab_size=900,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        hard_vocab_limit=False,
        split_digits=True,
        user_defined_symbols=["<sep>"],
        pad_id=3,
        num_threads=1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(buffer.getvalue())
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buffer.getvalue())
    if model_type == "bpe":
        vocab: object = {p.piece: i for i, p in enumerate(proto.pieces)}
    else:
        vocab = [(p.piece, p.score) for p in proto.pieces]
    tokenizer = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>", "<pad>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    write_json(folder / "special_tokens_map.json", specials)
    decoder = {
        str(i): {
            "content": p.piece,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": p.type != 4,
        }
        for i, p in enumerate(proto.pieces)
        if p.type in (2, 3, 4)
    }
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": False,
            "model_max_length": 512,
            "added_tokens_decoder": decoder,
            **specials,
        },
    )
    write_json(
        folder / "config.json",
        {
            "model_type": "llama",
            "vocab_size": len(proto.pieces),
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "tie_word_embeddings": False,
        },
    )
    write_json(folder / "generation_config.json", {"bos_token_id": 1, "eos_token_id": [2], "pad_token_id": 3})


def _bytelevel_folder(folder: Path) -> None:
    """A Qwen2-style folder: byte-level BPE, specials appended after the vocabulary, padded embedding."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=900, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(training_lines(), trainer)
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer.model.save(str(folder))  # vocab.json + merges.txt, as Qwen ships them
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    eot, im_start, im_end = (tokenizer.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    decoder = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in ((eot, "<|endoftext|>"), (im_start, "<|im_start|>"), (im_end, "<|im_end|>"))
    }
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "added_tokens_decoder": decoder,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "bos_token": None,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        },
    )
    write_json(
        folder / "config.json",
        {
            "model_type": "qwen2",
            "vocab_size": size + 29,
            "bos_token_id": eot,
            "eos_token_id": im_end,
            "tie_word_embeddings": True,
        },
    )
    generation = {"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot}
    write_json(folder / "generation_config.json", generation)


def _wordpiece_folder(folder: Path) -> None:
    """A BERT-style folder: WordPiece with [CLS]/[SEP] post-processing and vocab.txt."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=900, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator(training_lines(), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))],
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "do_lower_case": True,
        },
    )
    write_json(folder / "config.json", {"model_type": "bert", "vocab_size": len(vocab), "pad_token_id": 0})


def _suffix_bpe_folder(folder: Path) -> None:
    """An original-GPT-style folder: word-level BPE with an end-of-word suffix ``</w>``.

    Its merge trees cannot be found by running BPE on a token's characters alone (the suffix
    depends on the word), so the closure keeps the parents of every merge producing a kept token.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<unk>"], end_of_word_suffix="</w>", show_progress=False
    )
    tokenizer.train_from_iterator(training_lines(), trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>"})
    write_json(folder / "config.json", {"model_type": "openai-gpt", "vocab_size": tokenizer.get_vocab_size()})


BUILDERS = {
    "spm_bpe": lambda folder: _spm_folder(folder, "bpe"),
    "spm_unigram": lambda folder: _spm_folder(folder, "unigram"),
    "bytelevel": _bytelevel_folder,
    "wordpiece": _wordpiece_folder,
    "bpe_suffix": _suffix_bpe_folder,
}


def write_output(src: Path, out: Path, kept: list[int], pad_to: int = 1) -> list[str]:
    """Do what the engine does for the tokenizer side of ``run --keep-vocab``.

    Rewrites the tokenizer files, remaps config / generation config ids, sets ``vocab_size`` to
    the (optionally padded) embedding rows and records ``keep.vocab`` in prune_surgery.json.
    """
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = -(-len(kept) // pad_to) * pad_to
    written = rewrite_tokenizer_files(src, out, kept, vocab_size)
    for name in ("config.json", "generation_config.json"):
        if (src / name).is_file():
            cfg = remap_token_ids(json.loads((src / name).read_text(encoding="utf-8")), kept)
            if name == "config.json":
                cfg["vocab_size"] = vocab_size
            write_json(out / name, cfg)
    write_json(out / "prune_surgery.json", {"keep": {"vocab": kept}})
    return written


@dataclass
class Pruned:
    """A source tokenizer folder, its keep-vocab.json content and the pruned output folder."""

    src: Path
    out: Path
    keep: dict
    written: list[str]

    @property
    def kept(self) -> list[int]:
        return self.keep["vocab"]
