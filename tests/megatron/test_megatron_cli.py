"""`prune-surgery megatron export | reshard | import` and the torch-free package import."""

from __future__ import annotations

import subprocess
import sys

from megatron_fixtures import read_folder
from typer.testing import CliRunner

from prune_surgery.errors import CheckpointError
from prune_surgery.megatron.cli import app

runner = CliRunner()


def test_export_reshard_import_round_trip(llama, tmp_path):
    src = llama(True, "bfloat16")
    result = runner.invoke(app, ["export", str(src), str(tmp_path / "meg"), "--tp", "4"])
    assert result.exit_code == 0, result.output
    assert "TP=4" in result.output
    result = runner.invoke(app, ["reshard", str(tmp_path / "meg"), str(tmp_path / "meg2"), "--tp", "2", "--layer-spec", "local"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["import", str(tmp_path / "meg2" / "iter_0000001"), str(tmp_path / "hf"), "--max-shard-size", "20KB"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hf/model.safetensors.index.json").exists()  # sharded by --max-shard-size
    from megatron_fixtures import hf_tensors

    assert hf_tensors(tmp_path / "hf") == hf_tensors(src)
    assert {k: v for k, v in read_folder(tmp_path / "hf").items() if not k.startswith("model")} == \
        {k: v for k, v in read_folder(src).items() if not k.startswith("model")}


def test_errors_are_project_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["import", str(tmp_path / "empty"), str(tmp_path / "hf")])
    assert isinstance(result.exception, CheckpointError)
    assert "iter_* folders" in str(result.exception)


def test_importing_the_package_does_not_import_torch():
    code = "import sys, prune_surgery, prune_surgery.megatron, prune_surgery.megatron.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
