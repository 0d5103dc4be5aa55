"""`prune-surgery recover` from the command line: one-line errors that write nothing, dry runs."""

from __future__ import annotations

import json
import shutil

import models
from clitools import assert_clean_failure, cli
from tinytok import add_tokenizer

import prune_surgery as ps




def test_mismatched_pairs_and_bad_data_fail_in_one_line_and_write_nothing(teacher, student, text, tmp_path):
    out, data = tmp_path / "out", str(text[0])
    other_family = add_tokenizer(models.build(tmp_path / "qwen", "qwen2"), text[0].read_text()[:20000])
    other_size = add_tokenizer(models.build(tmp_path / "big", "llama", intermediate_size=80), text[0].read_text()[:20000])
    other_tok = tmp_path / "tok"
    shutil.copytree(teacher, other_tok)
    add_tokenizer(other_tok, text[1].read_text()[:20000])
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    base = ["recover", str(student), str(out), "--steps", "2", "--seq-len", "16", "--batch-size", "2"]
    assert_clean_failure(cli(*base, "--data", data, "--teacher", str(other_family)), "qwen2")
    assert_clean_failure(cli(*base, "--data", data, "--teacher", str(other_size)), "another source")
    assert_clean_failure(cli(*base, "--data", data, "--teacher", str(other_tok)), "tokenizers")
    assert_clean_failure(cli(*base, "--data", str(short)), "too few")
    assert_clean_failure(cli(*base, "--data", str(tmp_path / "nope.txt")), "does not exist")
    assert_clean_failure(cli("recover", str(teacher), str(out), "--data", data, "--steps", "2"), "--teacher")
    assert_clean_failure(cli(*base, "--data", data, "--objective", "kl"), "--objective")
    assert_clean_failure(cli(*base, "--data", data, "--resume"), "--resume")
    assert not out.exists() and not (tmp_path / "out.work").exists()
    out.mkdir()
    (out / "x").write_text("x")
    assert_clean_failure(cli(*base, "--data", data), "not empty")


def test_dry_run_says_steps_tokens_and_memory_and_writes_nothing(student, text, tmp_path):
    out = tmp_path / "out"
    result = cli("recover", str(student), str(out), "--data", str(text[0]), "--tokens", "1000", "--seq-len", "16",
                 "--batch-size", "4", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["steps"] == 16 and plan["tokens"] == 16 * 4 * 16
    assert plan["params"]["student"] == ps.inspect(student)["params"] and plan["params"]["teacher"] > plan["params"]["student"]
    memory = plan["memory"]
    assert memory["student_weights_grads_adam"] == 16 * plan["params"]["student"]
    assert memory["teacher_weights"] == 2 * plan["params"]["teacher"]
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")
    human = cli("recover", str(student), str(out), "--data", str(text[0]), "--steps", "10", "--dry-run")
    assert human.returncode == 0 and "peak memory" in human.stdout
    mega = cli("recover", str(student), str(out), "--data", str(text[0]), "--steps", "10", "--dry-run", "--engine", "megatron")
    assert mega.returncode == 0, mega.stderr
    assert "pretrain_gpt.py" in mega.stdout and "--num-layers 3" in mega.stdout and "--ffn-hidden-size 48" in mega.stdout
    assert "prune-surgery megatron export" in mega.stdout
    assert not out.exists() and not (tmp_path / "out.work").exists()


def test_no_space_for_checkpoints_fails_before_training_and_leaves_nothing(student, text, tmp_path, monkeypatch):
    import shutil as sh
    from collections import namedtuple

    import pytest

    from prune_surgery.errors import OutputError
    from prune_surgery.recover.run import recover
    from prune_surgery.recover.settings import Settings

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda path: usage(1 << 20, 1 << 20, 1000))
    with pytest.raises(OutputError, match="no space for checkpoints"):
        recover(student, tmp_path / "out", [text[0]], Settings(steps=2, seq_len=16, batch_size=2), progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()
