"""Fixtures for the Hub tests: a local fake Hub, an isolated Hub environment, tiny checkpoints.

Test modules import what they use (``from conftest_hub import fake_hub, hub_env, ...``).
Nothing here touches the real Hub: HF_ENDPOINT points at 127.0.0.1, the cache and the token
file live in a temporary folder, and Xet is disabled (a local server cannot offer it).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubserver import FakeHub

WRITER_TOKEN = "hf_writer_token"  # the fake Hub's user "me"
SOURCE_REPO = "org/tiny-llama"


def build_tiny_llama(folder: Path, *, tied: bool = False, shard: str = "200KB") -> Path:
    """Save a tiny LLaMA (4 layers, sharded, with tokenizer and generation config) to `folder`."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, tie_word_embeddings=tied,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(folder, max_shard_size=shard)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, 128)}}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untied LLaMA checkpoint folder with an index and two or more shards."""
    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    assert json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return folder


@pytest.fixture(scope="session")
def tiny_llama_tied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with tied embeddings (no lm_head): its layers are most of its bytes."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-tied"), tied=True)


def twins() -> dict[str, bytes]:
    """Files a real repo carries next to the safetensors that a job must never download."""
    return {
        "pytorch_model.bin": b"\x80pickle twin" * 100,
        "original/consolidated.00.pth": b"pth twin" * 100,
        "model-q4.gguf": b"GGUF" * 100,
        "consolidated.safetensors": b"unreferenced weights" * 100,
        "README.md": b"---\nlicense: apache-2.0\n---\n# Source card\n",
        "flax_model.msgpack": b"flax" * 100,
    }


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A running fake Hub (fresh state for each test)."""
    hub = FakeHub({WRITER_TOKEN: "me", "hf_reader_secret_token": "reader"}).start()
    yield hub
    hub.stop()


@pytest.fixture
def hub_env(fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point huggingface_hub at the fake Hub with an empty cache and no token; return HF_HOME."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for key, value in {"HF_ENDPOINT": fake_hub.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(cache),
                       "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "0",
                       "PRUNE_SURGERY_RETRY_WAIT": "0.01"}.items():  # retries of transient failures: no long waits
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    # huggingface_hub reads these at import time: patch the module too.
    for attr, value in {"ENDPOINT": fake_hub.url, "HUGGINGFACE_CO_URL_TEMPLATE": _template(fake_hub.url), "HF_HOME": str(home), "HF_HUB_CACHE": str(cache),
                        "HUGGINGFACE_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True,
                        "HF_HUB_DISABLE_TELEMETRY": True, "HF_TOKEN_PATH": str(home / "token"),
                        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens")}.items():
        monkeypatch.setattr(constants, attr, value)
    return home


def _template(endpoint: str) -> str:
    return endpoint + "/{repo_id}/resolve/{revision}/{filename}"


def set_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Turn HF_HUB_OFFLINE on or off (environment and the imported constant)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def dead_endpoint() -> str:
    """An http://127.0.0.1 URL on which nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def point_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Send Hub traffic to `endpoint` (environment and the imported constant)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", _template(endpoint))


@pytest.fixture(scope="session")
def pruned_once(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished prune-surgery output (layers 1 and 2 of the tiny LLaMA dropped)."""
    import prune_surgery

    out = tmp_path_factory.mktemp("pruned") / "out"
    prune_surgery.run(str(tiny_llama), out, prune_surgery.PruneSpec(drop_layers=(1, 2)),
                      command=f"prune-surgery run {tiny_llama} out --drop-layers 1,2")
    return out


@pytest.fixture
def pruned_out(pruned_once: Path, tmp_path: Path) -> Path:
    """A private copy of the finished output that a test may change."""
    import shutil

    return Path(shutil.copytree(pruned_once, tmp_path / "out"))
