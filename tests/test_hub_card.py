"""The generated model card: front matter, what changed, how it was made, what to do next."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from prune_surgery.card import GENERATED_MARK, render_model_card

RECORD = {
    "tool": "prune-surgery", "version": "0.1.0",
    "source": {"path": None, "repo_id": "org/base-model", "revision": "v2", "commit": "c0ffee" * 6 + "abcd"},
    "command": "prune-surgery run org/base-model out --hidden-size 48 --drop-layers 1,2 --push-to me/x",
    "spec": {"sizes": {"hidden": 48}, "drop_layers": [1, 2], "method": "magnitude", "seed": 7},
    "method": "magnitude", "seed": 7, "norm_rescale": True,
    "keep": {"layers": [0, 3], "hidden": list(range(48)), "heads": [[0, 1], [2, 3]]},
    "params": {"before": 8_030_261_248, "after": 4_512_000_000},
    "config_changes": {"num_hidden_layers": [4, 2], "hidden_size": [64, 48], "rms_norm_eps": [1e-6, 1.333e-6],
                       "layer_types": [["full"] * 4, ["full"] * 2]},
    "plan_hash": "sha256:" + "ab" * 32,
}


def write_out(folder: Path, record: dict, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prune_surgery.json").write_text(json.dumps(record))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_for_a_hub_source(tmp_path: Path) -> None:
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 48, "num_attention_heads": 4,
              "vocab_size": 128, "rms_norm_eps": 1.333e-6}
    card = render_model_card(write_out(tmp_path / "out", RECORD, config), "me/base-model-pruned")
    assert front_matter(card) == {"base_model": "org/base-model", "tags": ["pruned", "prune-surgery"],
                                  "library_name": "transformers"}
    assert GENERATED_MARK in card and "# me/base-model-pruned" in card
    assert "| parameters | 8,030,261,248 (8.03B) | 4,512,000,000 (4.51B), 56.2% of the original |" in card
    assert "| `num_hidden_layers` **(changed)** | 4 | 2 |" in card
    assert "| `hidden_size` **(changed)** | 64 | 48 |" in card
    assert "| `vocab_size` | 128 | 128 |" in card  # unchanged keys are shown too
    assert "`layer_types` **(changed)**" in card
    assert RECORD["command"] in card and '"drop_layers": [1, 2]' in card and RECORD["plan_hash"] in card
    assert "`layers`: 2 kept: [0, 3]" in card and "`heads`: chosen per layer (2 layers)" in card
    assert RECORD["source"]["commit"] in card and "model card of org/base-model was **not copied**" in card
    assert "recovery training" in card and "10-20B tokens" in card
    assert 'from_pretrained("me/base-model-pruned")' in card


def test_card_for_a_local_source_has_no_base_model(tmp_path: Path) -> None:
    record = dict(RECORD, source={"path": "/data/llama", "repo_id": None, "revision": None, "commit": None})
    card = render_model_card(write_out(tmp_path / "out", record, {"num_hidden_layers": 2}))
    assert front_matter(card) == {"tags": ["pruned", "prune-surgery"], "library_name": "transformers"}
    assert "`llama`" in card and "# Pruned checkpoint" in card and "<this repo>" in card


def test_card_tolerates_a_partial_record(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "prune_surgery.json").write_text('{"tool": "prune-surgery"}')
    card = render_model_card(out)  # no config.json, no params, no spec
    assert "| parameters | — | — |" in card and "(not recorded)" in card and "10-20B tokens" in card
    assert front_matter(card)["tags"] == ["pruned", "prune-surgery"]
    (out / "prune_surgery.json").write_text("not json")
    assert "# Pruned checkpoint" in render_model_card(out)
