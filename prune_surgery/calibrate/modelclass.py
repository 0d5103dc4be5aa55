"""Which `transformers` class runs a checkpoint, how its tensor names map onto the model's
parameters, and where its language model lives in it.

A text checkpoint runs as its causal-LM class; a vision-language checkpoint as the class its
config names (``architectures``: ``...ForConditionalGeneration``, the image-text-to-text class)
with text input only.  Nothing here names a family: the class comes from the config and
`transformers`' own auto mappings, and the decoder layers are found by mapping the checkpoint's
``{layer}`` tensors (as the table claims them) through `transformers`' own key renaming onto the
model's parameters, so ``language_model.model.layers.{layer}`` in a checkpoint finds
``model.language_model.layers`` in the model.

The *text path* is what a text-only forward may load besides the decoder layers: the module
that owns the decoder layers (embeddings, final norm, rotary tables) and the output embeddings
(the lm_head).  A vision tower or projector lies outside it; it stays on ``meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..arch import Architecture
from ..checkpoint import Checkpoint
from ..errors import ArchitectureError

#: the auto classes whose models produce next-token logits, tried in this order
GENERATIVE = ("AutoModelForCausalLM", "AutoModelForImageTextToText")


def param_namer(model: torch.nn.Module) -> Callable[[str], str]:
    """A function from checkpoint tensor names to the `model` parameters they load into.

    It applies `transformers`' own renaming and conversion rules (per-expert tensors land in
    fused 3-D parameters); a name they leave alone maps to itself.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "")

    def name_of(name: str) -> str:
        renamed, _ = rename_source_key(name, renamings, converters, prefix, state)
        return renamed if renamed in state else name

    return name_of


def eager_experts(model: torch.nn.Module) -> None:
    """Run fused experts one by one (``eager``): each expert's slice then goes through ``F.linear``,
    where its statistics are read.  Models without fused experts are left alone."""
    can = getattr(type(model), "_can_set_experts_implementation", None)
    if can is not None and can():
        model.set_experts_implementation("eager")


def model_class(config: Any) -> type:
    """The `transformers` class for `config`: the one its ``architectures`` names when that is a
    generative class of this model type, else the first generative auto mapping that knows it."""
    import transformers

    known = []
    for auto in GENERATIVE:
        mapping = getattr(getattr(transformers, auto, None), "_model_mapping", None)
        if mapping is not None and type(config) in mapping:
            known.append(mapping[type(config)])
    for name in getattr(config, "architectures", None) or []:
        named = getattr(transformers, name, None)
        if named is not None and named in known:
            return named
    if not known:
        raise ArchitectureError(f"transformers has no causal-LM or image-text-to-text class for model_type "
                                f"{config.model_type!r}; calibration and eval need a model transformers can run")
    return known[0]


def build_on_meta(root: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The checkpoint's model built from its config with every parameter on ``meta``."""
    import transformers
    from accelerate import init_empty_weights

    config = None
    try:
        config = transformers.AutoConfig.from_pretrained(str(root))
        cls = model_class(config)
        with init_empty_weights(include_buffers=False):
            return cls._from_config(config, dtype=dtype)
    except (ValueError, KeyError, TypeError) as exc:
        kind = config.model_type if config is not None else "this model"
        raise ArchitectureError(f"transformers cannot build {kind} from its config ({str(exc).splitlines()[0]}); "
                                "calibration needs a model transformers can run") from None


def load_whole(root: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The whole model loaded by ``from_pretrained`` with the same class (the in-memory reference)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(root))
    return model_class(config).from_pretrained(str(root), dtype=dtype).eval()


def decoder_layers(model: torch.nn.Module, arch: Architecture, ckpt: Checkpoint,
                   to_param: Callable[[str], str]) -> tuple[str, torch.nn.ModuleList]:
    """(module path, module list) of the decoder layers the table's ``{layer}`` tensors load into.

    Each such tensor is mapped to its model parameter; the decoder list is the module list whose
    child number is the tensor's layer.  Tensors of layers the model does not hold (multi-token
    prediction layers that transformers does not load) are passed over.
    """
    votes: dict[str, int] = {}
    for name in ckpt.tensors:
        claim = arch.match(name)
        if claim is None or "layer" not in claim[1]:
            continue
        parts = to_param(name).split(".")
        index = str(claim[1]["layer"])
        for cut in range(len(parts) - 1, 0, -1):
            if parts[cut] != index:
                continue
            path = ".".join(parts[:cut])
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(module, torch.nn.ModuleList) and int(index) < len(module):
                votes[path] = votes.get(path, 0) + 1
                break
    if not votes:
        prefixes = sorted({r.template.split("{layer}")[0].rstrip(".") for r in arch.roles.values() if "{layer}" in r.template})
        raise ArchitectureError(f"cannot find the decoder layers of {arch.family} in the transformers model "
                                f"{type(model).__name__} (looked for {', '.join(prefixes)}); the table and the model disagree")
    path = max(votes, key=lambda p: votes[p])
    return path, model.get_submodule(path)


def text_path(model: torch.nn.Module, layers_path: str) -> tuple[str, ...]:
    """Module paths a text-only forward may load outside the decoder layers: the owner of the
    layer list and the output embeddings.  ``""`` (everything) when the layers sit at the top."""
    owner = layers_path.rpartition(".")[0]
    allowed = [owner]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        allowed += [name for name, module in model.named_modules() if module is head]
    return tuple(allowed)


def on_text_path(name: str, allowed: tuple[str, ...]) -> bool:
    """Whether module `name` lies under one of the `allowed` paths."""
    return any(not p or name == p or name.startswith(p + ".") for p in allowed)
