"""`prune-surgery gguf` refusals: one line, exit 2, nothing written (the output folder untouched)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from gguf_fixtures import cli, tiny_with_tokenizer  # noqa: E402
from models import tree_digest  # noqa: E402

from prune_surgery.llamacpp.driver import RecordedTokenizer, Refused  # noqa: E402
from prune_surgery.llamacpp.identity import CHECK_TEXT, identity_of_tokenizer_json  # noqa: E402


def refused(out: Path, target: Path, *words: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
    """The conversion fails with one `error:` line naming `words`; no file and no temporary appear."""
    before = tree_digest(out)
    siblings = set(target.parent.iterdir()) if target.parent.is_dir() else None
    done = cli("gguf", str(out), str(target), *extra, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert (set(target.parent.iterdir()) if target.parent.is_dir() else None) == siblings
    assert tree_digest(out) == before


@pytest.fixture(scope="module")
def outputs(tokenizers_for_gguf, gguf_corpus, tmp_path_factory) -> dict[str, Path]:
    """Vocabulary-pruned tiny llamas: with an unknown byte-level BPE, and with SmolLM2's tokenizer."""
    root = tmp_path_factory.mktemp("gguf-errors")
    made = {}
    for kind in ("bytelevel", "smollm2"):
        src = tiny_with_tokenizer(tokenizers_for_gguf[kind], root / f"{kind}-src", tied=True, num_hidden_layers=2)
        keep = root / f"{kind}-keep.json"
        done = cli("vocab", "count", str(src), "--corpus", str(gguf_corpus["count"]), "--top-k", "100", "-o", str(keep))
        assert done.returncode == 0, done.stderr
        done = cli("run", str(src), str(root / kind), "-q", "--keep-vocab", str(keep))
        assert done.returncode == 0, done.stderr
        made[kind] = root / kind
    return made


def test_tokenizer_llama_cpp_cannot_represent(outputs, converter, tmp_path):
    """A byte-level BPE whose pre-tokenizer llama.cpp does not know (trained here): refused, not guessed."""
    refused(outputs["bytelevel"], tmp_path / "model.gguf", "pre-tokenizer", "cannot represent", "llama.cpp")


@pytest.mark.parametrize("architectures,words", [
    (["NoSuchModelForCausalLM"], ("does not know the architecture", "NoSuchModelForCausalLM")),
    (None, ("names no architecture",)),
], ids=["unknown", "missing"])
def test_architecture_the_converter_does_not_know(outputs, converter, tmp_path, architectures, words):
    out = tmp_path / "out"
    shutil.copytree(outputs["smollm2"], out)
    config = json.loads((out / "config.json").read_text())
    if architectures is None:
        config.pop("architectures", None)
    else:
        config["architectures"] = architectures
    (out / "config.json").write_text(json.dumps(config))
    refused(out, tmp_path / "model.gguf", *words)


def test_vocab_pruned_output_without_a_record(outputs, converter, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(outputs["smollm2"], out)
    record = json.loads((out / "prune_surgery.json").read_text())
    del record["source_tokenizer"]
    (out / "prune_surgery.json").write_text(json.dumps(record))
    refused(out, tmp_path / "model.gguf", "records no source tokenizer", "prune it again")


def test_damaged_record(outputs, converter, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(outputs["smollm2"], out)
    record = json.loads((out / "prune_surgery.json").read_text())
    record["source_tokenizer"]["check_ids"][3] += 1
    (out / "prune_surgery.json").write_text(json.dumps(record))
    refused(out, tmp_path / "model.gguf", "damaged")


def test_bad_arguments(outputs, tmp_path):
    existing = tmp_path / "model.gguf"
    existing.write_bytes(b"keep me")
    refused(outputs["smollm2"], existing, "exists", "--overwrite")
    assert existing.read_bytes() == b"keep me"
    refused(outputs["smollm2"], tmp_path / "x.gguf", "--outtype", extra=("--outtype", "q4_k"))
    refused(tmp_path, tmp_path / "y.gguf", "not a checkpoint folder")
    refused(outputs["smollm2"], tmp_path / "missing" / "z.gguf", "does not exist")


def test_converter_cannot_be_fetched(outputs, tmp_path):
    """No PyPI (and an empty cache): one line saying how to get the converter, nothing written."""
    (tmp_path / "empty").mkdir()
    offline = {"PRUNE_SURGERY_CACHE": str(tmp_path / "cache"), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "empty")}
    (tmp_path / "gguf").mkdir()
    refused(outputs["smollm2"], tmp_path / "gguf" / "model.gguf", "could not download llama-cpp-python==0.3.36",
            "PRUNE_SURGERY_LLAMA_CPP", env=offline)
    assert not any((tmp_path / "cache").iterdir())
    refused(outputs["smollm2"], tmp_path / "gguf" / "model.gguf", "no convert_hf_to_gguf.py",
            env={"PRUNE_SURGERY_LLAMA_CPP": str(tmp_path / "empty")})


def test_recorded_identity_is_used_only_for_the_check_text(tokenizers_for_gguf, converter):
    identity = identity_of_tokenizer_json((tokenizers_for_gguf["smollm2"] / "tokenizer.json").read_text())
    table = (converter / "conversion" / "base.py").read_text(encoding="utf-8")  # the converter's hash -> name table
    assert re.search(rf'chkhsh == "{identity["check_hash"]}":\n\s*# ref: [^\n]*\n\s*res = "smollm"', table)
    from transformers import AutoTokenizer  # how the converter itself encodes the check text

    for kind in ("smollm2", "bytelevel"):
        recorded = identity_of_tokenizer_json((tokenizers_for_gguf[kind] / "tokenizer.json").read_text())
        assert recorded["check_ids"] == AutoTokenizer.from_pretrained(tokenizers_for_gguf[kind]).encode(CHECK_TEXT)
    stand_in = RecordedTokenizer(identity, "the converter")
    assert stand_in.encode(CHECK_TEXT) == identity["check_ids"]
    with pytest.raises(Refused, match="another check text"):
        stand_in.encode(CHECK_TEXT + " ")
