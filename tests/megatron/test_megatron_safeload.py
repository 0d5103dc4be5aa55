"""Loading never runs pickled code: only tensors, plain values, Namespace and inert stand-ins."""

from __future__ import annotations

import argparse
import enum
import io
import os
import random
import sys
import types

import numpy as np
import pytest
import torch

from prune_surgery.errors import CheckpointError
from prune_surgery.megatron.safeload import EnumStandIn, load_rank_file


class Payload:
    """Runs a shell command when unpickled (if the loader let it)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Custom:
    """An ordinary but unknown class."""

    def __init__(self) -> None:
        self.x = 1


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"args": argparse.Namespace(), "model": {}, "hook": Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"refused to load, it names (posix|os)\.system.*never runs pickled code"):
        load_rank_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_refuses_an_unknown_class_and_names_it(tmp_path):
    torch.save({"args": Custom(), "model": {}}, tmp_path / "custom.pt")
    with pytest.raises(CheckpointError, match=r"test_megatron_safeload\.Custom"):
        load_rank_file(tmp_path / "custom.pt")


def test_refuses_a_file_that_is_not_a_torch_zip(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable torch zip checkpoint"):
        load_rank_file(tmp_path / "junk.pt")


def test_loads_megatron_enums_rng_state_and_te_extra_state_inertly(tmp_path, monkeypatch):
    class AttnBackend(enum.Enum):
        auto = 5

    module = types.ModuleType("megatron.core.transformer.enums")
    AttnBackend.__module__ = module.__name__
    AttnBackend.__qualname__ = "AttnBackend"
    module.AttnBackend = AttnBackend
    for name in ("megatron", "megatron.core", "megatron.core.transformer"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    content = {
        "args": argparse.Namespace(hidden_size=64, attention_backend=AttnBackend.auto),
        "model": {"w": torch.arange(6, dtype=torch.float32), "linear._extra_state": io.BytesIO(b"fp8 meta")},
        "rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state()}],
    }
    torch.save(content, tmp_path / "rank.pt")
    monkeypatch.delitem(sys.modules, module.__name__)  # the real class is gone when we load
    loaded = load_rank_file(tmp_path / "rank.pt")
    backend = loaded["args"].attention_backend
    assert isinstance(backend, EnumStandIn) and backend.value == 5 and "AttnBackend" in repr(backend)
    assert loaded["args"].hidden_size == 64
    assert torch.equal(loaded["model"]["w"], torch.arange(6, dtype=torch.float32))
    assert loaded["rng_state"][0]["np_rng_state"][0] == "MT19937"
