"""``vocab count`` and ``vocab verify`` through the command line, and the corpus reader."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from corpus_text import domain_lines, held_out_lines
from typer.testing import CliRunner
from vocab_fixtures import Pruned

from prune_surgery.errors import SpecError
from prune_surgery.vocab import build_keep_vocab
from prune_surgery.vocab.cli import app
from prune_surgery.vocab.corpus import expand_corpus, iter_texts

runner = CliRunner()


def _jsonl_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            f.write(json.dumps({"id": i, "meta": {"text": line}}) + "\n")
    return path


def test_corpus_reader_formats(tmp_path: Path) -> None:
    lines = ["first line", "second — line", "third"]
    (tmp_path / "a.txt").write_text("\n".join(lines[:2]) + "\n\n")
    _jsonl_gz(tmp_path / "b.jsonl.gz", lines[2:])
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("gzipped plain\n")
    paths = expand_corpus([str(tmp_path / "a.txt"), str(tmp_path / "*.gz")])
    assert [p.name for p in paths] == ["a.txt", "b.jsonl.gz", "c.txt.gz"]
    read = []
    assert list(iter_texts(paths, "meta.text", progress=read.append)) == lines + ["gzipped plain"]
    assert sum(read) == sum(p.stat().st_size for p in paths)
    with pytest.raises(SpecError, match="no field 'text'"):
        list(iter_texts([tmp_path / "b.jsonl.gz"], "text"))
    with pytest.raises(SpecError, match="matches no file"):
        expand_corpus([str(tmp_path / "*.parquet")])


def test_count_on_gzip_jsonl(tokenizer_dirs: dict[str, Path], corpus_files: dict[str, Path], tmp_path: Path) -> None:
    src = tokenizer_dirs["bytelevel"]
    lines = domain_lines()
    _jsonl_gz(tmp_path / "part-0.jsonl.gz", lines[: len(lines) // 2])
    _jsonl_gz(tmp_path / "part-1.jsonl.gz", lines[len(lines) // 2 :])
    out = tmp_path / "keep-vocab.json"
    parts = [str(tmp_path / "part-0.jsonl.gz"), str(tmp_path / "part-1.jsonl.gz")]
    # `--corpus data/*.jsonl.gz` unquoted: the shell passes the second file as an extra argument
    result = runner.invoke(
        app, ["count", str(src), "--corpus", *parts, "--text-field", "meta.text", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    keep = json.loads(out.read_text())
    assert summary["corpus"]["lines"] == len(lines)
    assert summary["closure_added"] == keep["closure_added"] > 0
    # the same counts as counting the plain-text copy of the corpus
    plain = build_keep_vocab(src, [corpus_files["domain"]])
    assert keep["counts"] == plain["counts"] and keep["vocab"] == plain["vocab"]
    assert keep["vocab_size"] == json.loads((src / "config.json").read_text())["vocab_size"]


def test_count_top_k_and_min_count(
    tokenizer_dirs: dict[str, Path], corpus_files: dict[str, Path], tmp_path: Path
) -> None:
    src = tokenizer_dirs["spm_unigram"]
    out = tmp_path / "keep.json"
    result = runner.invoke(
        app, ["count", str(src), "--corpus", str(corpus_files["domain"]), "--top-k", "40", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "always kept" in result.stdout and "closure" in result.stdout
    keep = json.loads(out.read_text())
    counts = {int(k): v for k, v in keep["counts"].items()}
    chosen = set(keep["vocab"]) - set(keep["always_kept"])
    assert keep["chosen_by_count"] == 40 and len(chosen) <= 40
    threshold = sorted(counts.values(), reverse=True)[39]
    assert all(counts[i] >= threshold for i in chosen)
    by_min = build_keep_vocab(src, [corpus_files["domain"]], min_count=threshold + 1)
    assert all(counts[i] > threshold for i in set(by_min["vocab"]) - set(by_min["always_kept"]))


def test_verify_passes_and_prints_figures(pruned: dict[str, Pruned], corpus_files: dict[str, Path]) -> None:
    p = pruned["spm_bpe"]
    result = runner.invoke(app, ["verify", str(p.src), str(p.out), "--corpus", str(corpus_files["held_out"]), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and {t["tokenizer"] for t in report["tokenizers"]} == {"tokenizer.json", "tokenizer.model"}
    for figures in report["tokenizers"]:
        assert figures["lines"] == len(held_out_lines())
        assert 0.2 < figures["identical_share"] < 1.0
        assert figures["tokens_per_line_after"] > figures["tokens_per_line_before"]
    table = runner.invoke(app, ["verify", str(p.src), str(p.out), "--corpus", str(corpus_files["held_out"])])
    assert table.exit_code == 0 and "tok/line" in table.stdout and "guarantee holds" in table.stdout


def _tamper_swap(out: Path) -> None:
    """Swap the ids of two frequent tokens in the pruned tokenizer.json."""
    data = json.loads((out / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["Ġthe"], vocab["Ġmodel"] = vocab["Ġmodel"], vocab["Ġthe"]
    (out / "tokenizer.json").write_text(json.dumps(data))


def _tamper_map(out: Path) -> None:
    """Record an id map that lacks one frequent token, so every later id is off by one."""
    record = json.loads((out / "prune_surgery.json").read_text())
    the = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]["Ġthe"]
    del record["keep"]["vocab"][the]
    (out / "prune_surgery.json").write_text(json.dumps(record))


def _tamper_bytes(out: Path) -> None:
    """Drop a byte-level base token's vocab entry by renaming it (its byte no longer round-trips)."""
    data = json.loads((out / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["ð_gone"] = vocab.pop("ð")
    data["model"]["merges"] = [m for m in data["model"]["merges"] if "ð" not in "".join(m)]
    (out / "tokenizer.json").write_text(json.dumps(data))


@pytest.mark.parametrize("tamper", [_tamper_swap, _tamper_map, _tamper_bytes])
def test_verify_exits_1_when_the_guarantee_breaks(
    pruned: dict[str, Pruned], corpus_files: dict[str, Path], tmp_path: Path, tamper
) -> None:
    p = pruned["bytelevel"]
    out = tmp_path / "out"
    shutil.copytree(p.out, out)
    tamper(out)
    result = runner.invoke(app, ["verify", str(p.src), str(out), "--corpus", str(corpus_files["held_out"])])
    assert result.exit_code == 1, result.output
    assert "guarantee BROKEN" in result.stdout
