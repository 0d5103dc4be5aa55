"""The real SmolLM2-135M-Instruct, vocabulary-, depth- and width-pruned, becomes a GGUF that computes the same.

Oracles: `gguf` reads the tokenizer metadata back (pre-tokenizer `smollm`, the pruned tokens and
merges, special ids); `transformers` loads the GGUF itself (tokenizer and f16 weights) and must
tokenize every held-out line as the pruned checkpoint's tokenizer does, and give the same
logits and perplexity as the pruned safetensors checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from gguf_fixtures import GGUF_SPECIAL, SPECIAL_KEYS, cli, hf_merges, hf_tokens, read_gguf  # noqa: E402

pytestmark = pytest.mark.real_model


def test_smollm2_vocab_depth_width_pruned_to_gguf(smollm2, gguf_corpus, converter, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    keep, out, gguf = tmp_path / "keep.json", tmp_path / "out", tmp_path / "smollm2-pruned.gguf"
    done = cli("vocab", "count", str(smollm2), "--corpus", str(gguf_corpus["count"]), "-o", str(keep))
    assert done.returncode == 0, done.stderr
    done = cli("run", str(smollm2), str(out), "-q", "--keep-vocab", str(keep), "--num-hidden-layers", "26",
               "--intermediate-size", "1280")
    assert done.returncode == 0, done.stderr
    done = cli("gguf", str(out), str(gguf))
    assert done.returncode == 0, done.stdout + done.stderr

    fields, tensors = read_gguf(gguf)
    config = json.loads((out / "config.json").read_text())
    kept = json.loads(keep.read_text())["vocab"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.ggml.tokens"] == hf_tokens(out / "tokenizer.json", config["vocab_size"])
    assert fields["tokenizer.ggml.merges"] == hf_merges(out / "tokenizer.json")
    source = json.loads((smollm2 / "config.json").read_text())
    for key in SPECIAL_KEYS:
        assert fields[f"tokenizer.ggml.{GGUF_SPECIAL[key]}"] == kept.index(source[key]) == config[key]
    assert tensors["token_embd.weight"].shape == (len(kept), 576) and "output.weight" not in tensors  # tied
    assert fields["llama.block_count"] == 26 and fields["llama.feed_forward_length"] == 1280

    from_gguf = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf.name)
    pruned_tokenizer = AutoTokenizer.from_pretrained(out)
    lines = gguf_corpus["held_out"].read_text(encoding="utf-8").splitlines()
    assert [from_gguf.encode(t) for t in lines] == [pruned_tokenizer.encode(t) for t in lines]

    model_gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.tensor([pruned_tokenizer.encode(" ".join(lines))[:256]])
    with torch.no_grad():
        got, want = model_gguf(ids, labels=ids), model(ids, labels=ids)
    scale = want.logits.abs().max()
    assert (got.logits - want.logits).abs().max() <= 1e-3 * scale  # bf16 weights stored as f16
    assert abs(torch.exp(got.loss) / torch.exp(want.loss) - 1) < 1e-4  # perplexity within 0.01%
