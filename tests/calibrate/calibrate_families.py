"""Every table's family, with the builder of its tiny model (the calibration tests cover them all)."""

from __future__ import annotations

import models
import models_families
import models_families_2026  # noqa: F401  (registers the 2026 families in models_families.FAMILIES)
import models_gemma4
import models_moe2026

TINY = {name: (models.build, name) for name in models.FAMILIES} | {
    name: (models_families.build, name) for name in models_families.FAMILIES}
TINY["llama_tied"] = (models.build, "llama")
TINY["gemma4"] = (lambda path, family, **extra: models_gemma4.build_gemma4(path, "dense"), "gemma4")
TINY["gemma4_moe"] = (lambda path, family, **extra: models_gemma4.build_gemma4(path, "moe"), "gemma4")
TINY.update({name: (models_moe2026.build, name) for name in models_moe2026.FAMILIES})
# the Hub layout of Qwen3.5-MoE: experts as [experts, out, in] stacks in the checkpoint itself
TINY["qwen3_5_moe_fused"] = (lambda path, family, **extra: models_moe2026.fuse_experts(
    models_moe2026.build(path.with_name(path.name + "_per_expert"), family), path), "qwen3_5_moe")
