"""Run a checkpoint through stock `transformers` modules one decoder layer at a time.

The model (the class `transformers` runs the checkpoint with: a causal LM, or a VLM's image-text
class given text only) is built from its config with every parameter on the ``meta`` device.
Resident at any time: one decoder layer's weights (read from the memory-mapped shards through
`transformers`' own weight conversions, so fused expert tensors load as they do in
``from_pretrained``), the residual stream of every window, and one micro-batch of temporaries.

1. **embed**: the model's own forward runs with each decoder layer replaced by a recorder that
   keeps the arguments the model passes it for each micro-batch (masks and position embeddings
   depend on the window shape only and are kept once; per-layer input embeddings or a KV-sharing
   dict are the micro-batch's own) and stops after the last; the first recorder's input is the
   embedded stream.
2. **layers**: each layer is materialized, every micro-batch goes through its stock forward with
   its recorded arguments, and the layer goes back to ``meta``.
3. **head**: the model's forward runs again on token ids 0, its embedding tables empty (zeros,
   never loaded) and its layers replaced by injectors that return the final stream, a chunk of
   tokens at a time, so the model's own final norm, lm_head and logit soft-capping produce the
   logits; never [tokens x vocab] at once.

The decoder layer list is where `transformers`' key renaming puts the table's ``{layer}`` tensors
(:mod:`modelclass`); only the text path loads besides it (a vision tower stays on ``meta``); no
family is named here.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..api import Source
from ..errors import ArchitectureError, CheckpointError
from .modelclass import build_on_meta, decoder_layers, eager_experts, on_text_path, param_namer, text_path


@contextlib.contextmanager
def _forward_errors(layer: int | str | None) -> Iterator[None]:
    """A forward that transformers cannot run on this checkpoint becomes one line."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        where = f"decoder layer {layer}" if isinstance(layer, int) else layer or "the embedding"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArchitectureError(f"the transformers forward of {where} failed ({first}); this checkpoint cannot be run layer by layer") from exc


def _trim_heap() -> None:
    """Return freed heap pages to the system (glibc's malloc_trim; a no-op elsewhere)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _shared(new: Any, first: Any) -> Any:
    """`new` with every tensor equal to its counterpart in `first` replaced by that one (masks and
    rotary tables are kept once per shape); other objects, such as a dict the layers share state
    through, keep their identity."""
    if isinstance(new, torch.Tensor):
        same = (isinstance(first, torch.Tensor) and first.shape == new.shape and first.dtype == new.dtype
                and first.device == new.device and not new.is_meta and torch.equal(first, new))
        return first if same else new
    if type(new) in (tuple, list) and type(first) is type(new) and len(first) == len(new):
        return type(new)(_shared(a, b) for a, b in zip(new, first))
    return new


class _Stop(Exception):
    """Raised by the last recorder: the rest of the model's forward is not needed."""


class _Stand(torch.nn.Module):
    """Stands in for a decoder layer inside the model's forward (attributes read through)."""

    def __init__(self, layer: torch.nn.Module, index: int, engine: "LayerwiseModel") -> None:
        super().__init__()
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_layer"), name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._engine._stand_in(self._index, hidden_states, args, kwargs)


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


class LayerwiseModel:
    """A checkpoint executed layer by layer with `transformers` modules."""

    def __init__(self, source: Source, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
        from transformers.conversion_mapping import get_model_conversion_mapping

        root = source.local_root
        if root is None:
            raise CheckpointError("calibration and eval read a local copy of the checkpoint; drop --stream")
        _quiet_transformers()
        self.source, self.arch, self.ckpt = source, source.arch, source.checkpoint
        self.dtype, self.device = dtype, torch.device(device)
        self.model = build_on_meta(Path(root), dtype)
        self.model.eval()
        eager_experts(self.model)
        for owner in self.model.modules():  # buffers (rotary frequencies, scales) live on the device
            for name, buffer in list(owner._buffers.items()):
                if buffer is not None:
                    owner._buffers[name] = buffer.to(self.device)
        self.mapping = get_model_conversion_mapping(self.model)
        self._to_param = param_namer(self.model)
        self.params: dict[str, list[str]] = {}  # model parameter -> checkpoint tensors
        self.layer_of: dict[str, int] = {}
        for name in self.ckpt.tensors:
            claim = self.arch.match(name)
            if claim is None:
                continue
            self.params.setdefault(self.to_param(name), []).append(name)
            if "layer" in claim[1]:
                self.layer_of[name] = claim[1]["layer"]
        self.layers_path, self.layers = decoder_layers(self.model, self.arch, self.ckpt, self.to_param)
        self.text_path = text_path(self.model, self.layers_path)
        self._handles: dict[str, Any] = {}
        self._mode = "embed"
        self._captured: dict[int, list[tuple[tuple, dict]]] = {}  # micro-batch start -> per layer (args, kwargs)
        self._by_shape: dict[tuple[int, ...], list[tuple[tuple, dict]]] = {}  # the first micro-batch of each shape
        self._start = 0
        self._first: torch.Tensor | None = None
        self._final: torch.Tensor | None = None

    # -- names -------------------------------------------------------------------------------
    def to_param(self, name: str) -> str:
        """The model parameter a checkpoint tensor is loaded into (transformers' renaming rules)."""
        return self._to_param(name)

    @property
    def num_layers(self) -> int:
        """Decoder layers of the checkpoint."""
        return len(self.layers)

    def layer_params(self, index: int) -> dict[int, str]:
        """id(parameter) -> full parameter name, for the materialized layer `index`."""
        prefix = self._layer_prefix(index)
        return {id(p): f"{prefix}.{n}" for n, p in self.layers[index].named_parameters()}

    def _layer_prefix(self, index: int) -> str:
        return f"{self.layers_path}.{index}"

    # -- weights -----------------------------------------------------------------------------
    def _read(self, names: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.ckpt.tensors[name].file, []).append(name)
        out = {}
        root = self.source.local_root
        assert root is not None
        for file, group in by_file.items():
            with safe_open(str(Path(root) / file), framework="pt", device="cpu") as handle:
                for name in group:
                    out[name] = handle.get_tensor(name)
        return out

    def materialize(self, module: torch.nn.Module, prefix: str) -> None:
        """Load every meta parameter of `module` (named `prefix` in the model) from the checkpoint."""
        from transformers.core_model_loading import convert_and_load_state_dict_in_model
        from transformers.modeling_utils import LoadStateDictConfig

        wanted = {f"{prefix}.{n}" if prefix else n: p for n, p in module.named_parameters() if p.is_meta}
        # persistent buffers the checkpoint holds (a router's e_score_correction_bias) load with them
        wanted.update({f"{prefix}.{n}" if prefix else n: b for n, b in module.named_buffers()})
        names = [t for param in wanted for t in self.params.get(param, [])]
        if names:
            config = LoadStateDictConfig(weight_mapping=self.mapping, dtype=self.dtype, device_map={"": str(self.device)})
            info, _ = convert_and_load_state_dict_in_model(self.model, self._read(names), config)
            if info.mismatched_keys or info.conversion_errors:
                raise ArchitectureError(f"transformers could not load {prefix or 'the model'}: "
                                        f"{sorted(info.mismatched_keys)[:2] or info.conversion_errors}")
        for name, param in list(module.named_parameters()):
            if param.is_meta:
                full = f"{prefix}.{name}" if prefix else name
                self._tied(module, name, full)

    def _tied(self, module: torch.nn.Module, name: str, full: str) -> None:
        """Fill parameter `full`, which the checkpoint does not hold, from the tensor its role is tied to
        (the table's `tied_to`; the role found through transformers' renaming of its template)."""
        tied = {r.tied_to for r in (*self.arch.roles.values(), *self.arch.alias_roles)
                if r.tied_to and not r.placeholders and full in (r.template, self.to_param(r.template))}
        stored = [t for t in self.ckpt.tensors if (c := self.arch.match(t)) is not None and c[0].role in tied]
        if not stored:
            raise CheckpointError(f"the checkpoint holds no tensor for parameter {full}; it cannot run")
        value = self._read(stored[:1])[stored[0]].to(self.device, self.dtype)
        owner, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, leaf, torch.nn.Parameter(value, requires_grad=False))

    @staticmethod
    def free(module: torch.nn.Module) -> None:
        """Send a module's parameters back to ``meta`` (their memory is released; buffers stay).

        glibc keeps freed heap memory in its arenas; without handing it back after each layer the
        process grew from 0.5 to 2.6 GiB over SmolLM2's 30 layers (fragmentation, not live data).
        """
        for owner in module.modules():
            for name, param in list(owner._parameters.items()):
                if param is not None and not param.is_meta:
                    owner._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _trim_heap()

    @contextlib.contextmanager
    def _outer_lazy(self, empty_embeddings: bool = False) -> Iterator[None]:
        """Materialize non-layer modules (embedding, final norm, lm_head) when the forward calls them.

        Only modules on the text path load; a forward that reaches another (a vision tower) is refused.
        With `empty_embeddings` every embedding table is zeros, one row broadcast, and is not loaded
        (the head stage: its layers are injectors, what enters them does not matter).
        """
        layer_ids = {id(m) for layer in self.layers for m in layer.modules()}
        hooks, loaded, emptied = [], [], []
        for name, module in self.model.named_modules():
            if id(module) in layer_ids or not any(True for _ in module.parameters(recurse=False)):
                continue
            if empty_embeddings and isinstance(module, torch.nn.Embedding) and module.weight.is_meta:
                zeros = torch.zeros(1, module.embedding_dim, dtype=self.dtype, device=self.device)
                module._parameters["weight"] = torch.nn.Parameter(zeros.expand(module.weight.shape), requires_grad=False)
                emptied.append(module)
                continue

            def pre(mod: torch.nn.Module, args: Any, _name: str = name) -> None:
                if any(p.is_meta for p in mod.parameters(recurse=False)):
                    if not on_text_path(_name, self.text_path):
                        raise ArchitectureError(f"the text-only forward reached {_name}, outside the language model "
                                                f"({', '.join(self.text_path)}); it stays unloaded, so this model cannot run layer by layer")
                    self.materialize(mod, _name)
                    loaded.append(mod)

            hooks.append(module.register_forward_pre_hook(pre))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()
            for mod in loaded + emptied:
                self.free(mod)

    # -- the three stages --------------------------------------------------------------------
    @contextlib.contextmanager
    def _standing(self, mode: str) -> Iterator[None]:
        originals = list(self.layers)
        self._mode = mode
        for i, layer in enumerate(originals):
            self.layers[i] = _Stand(layer, i, self)
        try:
            with self._outer_lazy(empty_embeddings=mode == "head"):
                yield
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer

    def _stand_in(self, index: int, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        if self._mode == "embed":
            calls = self._captured.setdefault(self._start, [])
            if len(calls) < self.num_layers:
                first = self._by_shape.setdefault(tuple(hidden.shape[:2]), [])
                if len(first) <= index:
                    first.append((args, kwargs))
                args_first, kwargs_first = first[index]
                calls.append((_shared(args, args_first), {k: _shared(v, kwargs_first.get(k)) for k, v in kwargs.items()}))
            if index == 0:
                self._first = hidden
            if index == self.num_layers - 1:
                raise _Stop
            return hidden
        return self._final if index == self.num_layers - 1 else hidden  # type: ignore[return-value]

    @torch.no_grad()
    def embed(self, ids: torch.Tensor, micro: int) -> torch.Tensor:
        """The residual stream entering layer 0 for windows `ids` [N, T] (compute dtype, on the device).

        It also records the arguments the model passes each layer for each micro-batch (windows
        ``start`` onwards): masks and rotary tables depend on the shape only and are shared, but some
        depend on the tokens (per-layer input embeddings) or carry state from layer to layer (a KV
        sharing dict).
        """
        parts = self._embed(ids, micro, keep=True)
        return torch.cat(parts)

    @torch.no_grad()
    def record(self, ids: torch.Tensor, micro: int) -> None:
        """Record the layers' arguments for windows `ids` only (a resumed run has its stream)."""
        self._embed(ids, micro, keep=False)

    def _embed(self, ids: torch.Tensor, micro: int, keep: bool) -> list[torch.Tensor]:
        parts = []
        with self._standing("embed"):
            for start in range(0, ids.shape[0], micro):
                batch = ids[start : start + micro].to(self.device)
                self._start = start
                self._captured[start] = []
                with contextlib.suppress(_Stop), _forward_errors(None):
                    self.model(input_ids=batch, use_cache=False)
                assert self._first is not None
                if keep:
                    parts.append(self._first.to(self.dtype))
        return parts

    @property
    def captured(self) -> dict[int, list[tuple[tuple, dict]]]:
        """Per micro-batch (its first window), the (args, kwargs) the model passes each layer."""
        return self._captured

    def layer_args(self, index: int, shape: tuple[int, int], start: int | None = None) -> tuple[tuple, dict]:
        """The arguments the model passes decoder layer `index` for the micro-batch at window `start`
        (None: those of the first micro-batch of `shape`, right only for arguments of the shape alone)."""
        return self._by_shape[shape][index] if start is None else self._captured[start][index]

    @contextlib.contextmanager
    def resident(self, index: int) -> Iterator[torch.nn.Module]:
        """Decoder layer `index` with its weights loaded; they go back to ``meta`` on exit."""
        layer = self.layers[index]
        self.materialize(layer, self._layer_prefix(index))
        try:
            yield layer
        finally:
            self.free(layer)

    @torch.no_grad()
    def forward(self, index: int, h_in: torch.Tensor, start: int | None = None) -> torch.Tensor:
        """One micro-batch (windows `start` onwards) through the (resident) decoder layer `index`, with
        the arguments the model passes it for those windows."""
        args, kwargs = self.layer_args(index, tuple(h_in.shape[:2]), start)
        with _forward_errors(index):
            out = self.layers[index](h_in, *args, **kwargs)
        if isinstance(out, tuple):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.shape != h_in.shape:
            raise ArchitectureError(f"decoder layer {index} of {self.arch.family} returned {type(out).__name__}; "
                                    "its forward cannot run layer by layer")
        return out

    @torch.no_grad()
    def run_layer(self, index: int, hidden: torch.Tensor, micro: int,
                  observe: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                  around: Callable[[int, torch.Tensor], contextlib.AbstractContextManager] | None = None) -> None:
        """Materialize layer `index`, run every micro-batch of `hidden` through it (in place), free it.

        `observe(start, h_in, h_out)` sees each micro-batch; `around(start, batch)` wraps each forward.
        """
        with self.resident(index):
            for start in range(0, hidden.shape[0], micro):
                h_in = hidden[start : start + micro]
                with around(start, h_in) if around else contextlib.nullcontext():
                    out = self.forward(index, h_in, start)
                if observe:
                    observe(start, h_in, out)
                hidden[start : start + micro] = out

    @torch.no_grad()
    def logits(self, final: torch.Tensor) -> torch.Tensor:
        """Logits (float32) of a final stream chunk [B, t, H], through the model's own head.

        The model runs on token ids 0 with empty embeddings: from ``inputs_embeds`` alone some
        models reverse the embedding to find the ids (per-layer input embeddings), which needs it loaded.
        """
        self._final = final
        ids = torch.zeros(final.shape[:2], dtype=torch.long, device=self.device)
        with _forward_errors("the head"):
            return self.model(input_ids=ids, use_cache=False).logits.float()

    @contextlib.contextmanager
    def head(self) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """A context in which `logits(chunk)` runs the head (its weights stay loaded inside)."""
        with self._standing("head"):
            yield self.logits
