"""Every table's family, with the builder of its tiny model (the calibration tests cover them all)."""

from __future__ import annotations

import models
import models_families
import models_families_2026  # noqa: F401  (registers the 2026 families in models_families.FAMILIES)
import models_gemma4
import models_moe2026
import models_qwen3_5_mtp

TINY = {name: (models.build, name) for name in models.FAMILIES} | {
    name: (models_families.build, name) for name in models_families.FAMILIES}
TINY["llama_tied"] = (models.build, "llama")
TINY["gemma4"] = (lambda path, family, **extra: models_gemma4.build_gemma4(path, "dense"), "gemma4")
TINY["gemma4_moe"] = (lambda path, family, **extra: models_gemma4.build_gemma4(path, "moe"), "gemma4")
TINY.update({name: (models_moe2026.build, name) for name in models_moe2026.FAMILIES})
# the Hub layout of Qwen3.5-MoE: experts as [experts, out, in] stacks in the checkpoint itself
TINY["qwen3_5_moe_fused"] = (lambda path, family, **extra: models_moe2026.fuse_experts(
    models_moe2026.build(path.with_name(path.name + "_per_expert"), family), path), "qwen3_5_moe")
#: E2B-style: per-layer input embeddings (they depend on the tokens) and KV sharing (state carried between layers)
TINY["gemma4_ple"] = (lambda path, family, **extra: models_gemma4.build_gemma4(path, "ple_shared"), "gemma4")

#: the vision-language tables: their language model, run by the image-text class on text only
VLM = {"gemma3_vlm": "gemma3", "mistral3_vlm": "mistral3", "qwen3_5_vlm": "qwen3_5"}
TINY.update({name: (lambda path, family, _kind=kind, **extra: models_families_2026.build_vlm(path, _kind), name)
             for name, kind in VLM.items()})
TINY["qwen3_5_moe_vlm"] = (lambda path, family, **extra: models_qwen3_5_mtp.build_moe_vlm(path), "qwen3_5_moe_vlm")
TINY["gemma4_moe_vlm"] = (lambda path, family, **extra: models_gemma4.build_gemma4_vlm(path, "moe"), "gemma4_moe_vlm")
