"""What the user asks for: a :class:`PruneSpec`, from options, a YAML/JSON file, or both.

Target sizes are keyed by the config key of the space they prune (``hidden_size``,
``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``,
``num_hidden_layers``, ...), so a new family's spaces need no new option names in the API.
The original method's config (``hidden_size_remain``, ``num_attention_heads_remain``,
``ffn_hidden_size_remain``, ``drop_layers``) is accepted too.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

DEFAULT_SEED = 1234
DEFAULT_SAMPLES = 32  # calibration windows (a CPU-friendly default: 16k tokens)
DEFAULT_SEQ_LEN = 512  # tokens per calibration / evaluation window
DEFAULT_SHARD_SIZE = 5 * 10**9
METHODS = ("random", "magnitude", "activation")
#: methods that rank units by a score (weight norms, or activation statistics from a scores file)
SCORED = ("magnitude", "activation")

#: keys of the original project's prune config -> our target keys
ORIGINAL_KEYS = {
    "hidden_size_remain": "hidden_size",
    "num_attention_heads_remain": "num_attention_heads",
    "num_key_value_heads_remain": "num_key_value_heads",
    "num_query_groups_remain": "num_key_value_heads",
    "ffn_hidden_size_remain": "intermediate_size",
    "intermediate_size_remain": "intermediate_size",
}
OPTION_KEYS = {
    "drop_layers", "method", "seed", "balance", "keep", "keep_vocab", "norm_rescale",
    "max_shard_size", "pad_vocab_to_multiple_of", "dequantize", "scores", "calibration", "calibration_samples",
    "calibration_seq_len", "refit", "depth",
}
DEPTH_RULES = ("influence", "block", "ppl")
REFIT_MODES = ("oneshot", "sequential")
# the defaults are the best measured by bench/refit_bench.py (bench/results/refit.md)
DEFAULT_REFIT = "oneshot"  # bare --refit
DEFAULT_DEPTH = "influence"  # --method activation with a depth cut and no --depth (ppl: best on deep cuts, costly)


@dataclass(frozen=True)
class PruneSpec:
    """A pruning request. Empty `sizes` and no `drop_layers` keep everything."""

    sizes: dict[str, int] = field(default_factory=dict)
    drop_layers: tuple[int, ...] | None = None
    method: str = "random"
    seed: int = DEFAULT_SEED
    balance: int | None = None
    keep: dict[str, Any] | None = None
    keep_vocab: tuple[int, ...] | None = None
    pad_vocab_to_multiple_of: int | None = None
    norm_rescale: bool = True
    max_shard_size: int = DEFAULT_SHARD_SIZE
    dequantize: bool = False  # write block-quantized (FP8) weights dequantized
    scores: str | None = None  # a scores file from `prune-surgery calibrate` (--method activation)
    calibration: tuple[str, ...] | None = None  # data files to calibrate on the fly (--method activation, --refit)
    calibration_samples: int | None = None  # windows of calibration data (default: calibrate's)
    calibration_seq_len: int | None = None  # tokens per window (default: calibrate's)
    refit: str | None = None  # "oneshot" or "sequential": least-squares refit of the readers of pruned units
    depth: str | None = None  # with --method activation: "influence" (default), "block" or "ppl"

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record of the spec (kept indices left out: they are recorded apart)."""
        record = asdict(self)
        record.pop("keep")
        record.pop("keep_vocab")
        if not record["dequantize"]:
            record.pop("dequantize")
        record["drop_layers"] = list(self.drop_layers) if self.drop_layers is not None else None
        record["calibration"] = list(self.calibration) if self.calibration else None
        return {k: v for k, v in record.items() if v is not None and v != {}}

    def with_options(self, **options: Any) -> PruneSpec:
        """A copy with non-None options applied (CLI options override a spec file)."""
        return replace(self, **{k: v for k, v in options.items() if v is not None})


def parse_size(text: str | int) -> int:
    """Parse '5GB' (10^9), '500MiB' (2^20), '1e9' or an int into bytes."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?(?:e\d+)?)\s*([KMGT]?i?B)?\s*", str(text), re.IGNORECASE)
    if not found or float(found.group(1)) <= 0:
        raise SpecError(f"cannot read size {text!r}; write e.g. 5GB, 500MB or 2GiB")
    unit = (found.group(2) or "B").upper()
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    base = 1024 if "I" in unit else 1000
    return int(float(found.group(1)) * base**power)


MAX_LAYERS = 1 << 20  # a layer list naming more is a typo, not a model


def parse_layers(text: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Parse '4,7,10-12' (0-based, inclusive ranges) or a list into sorted unique ints."""
    if isinstance(text, (list, tuple)):
        items = [str(x) for x in text]
    else:
        items = [p for p in str(text).replace(" ", "").split(",") if p]
    layers: set[int] = set()
    for item in items:
        found = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not found:
            raise SpecError(f"cannot read layer list item {item!r}; write e.g. 4,7,10-12 (0-based)")
        low, high = int(found.group(1)), int(found.group(2) or found.group(1))
        if high < low:
            raise SpecError(f"layer range {item!r} runs backwards; write low-high")
        if high >= MAX_LAYERS:
            raise SpecError(f"layer {high} in {item!r} is beyond any model ({MAX_LAYERS} layers at most); check the list")
        layers.update(range(low, high + 1))
    return tuple(sorted(layers))


def _positive(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        try:
            value = int(str(value))
        except ValueError:
            raise SpecError(f"{key} must be a positive integer, got {value!r}") from None
        if value <= 0:
            raise SpecError(f"{key} must be a positive integer, got {value!r}")
    return int(value)


def spec_from_dict(data: dict[str, Any]) -> PruneSpec:
    """Build a spec from a dict of option names (hyphens or underscores) and target sizes.

    `keep` / `keep_vocab` may be paths (relative to the working directory) or parsed values.
    """
    from .keepfile import load_keep  # local: keepfile imports nothing from here at import time

    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    sizes: dict[str, int] = {}
    options: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        target = ORIGINAL_KEYS.get(key, key)
        if key in OPTION_KEYS:
            options[key] = value
        elif re.fullmatch(r"[a-z_][a-z0-9_.]*", target) and not key.startswith("_"):
            sizes[target] = _positive(key, value)
        else:
            raise SpecError(f"unknown spec key {key!r}")
    spec = PruneSpec(sizes=sizes)
    if "drop_layers" in options:
        spec = replace(spec, drop_layers=parse_layers(options["drop_layers"]))
    if "method" in options:
        if options["method"] not in METHODS:
            raise SpecError(f"method must be one of {', '.join(METHODS)}, got {options['method']!r}")
        spec = replace(spec, method=options["method"])
    if "seed" in options:
        seed = options["seed"]
        if isinstance(seed, bool) or not isinstance(seed, (int, str)) or not re.fullmatch(r"\s*\d+\s*", str(seed)):
            raise SpecError(f"seed must be a non-negative integer, got {seed!r}")
        spec = replace(spec, seed=int(seed))
    if "balance" in options:
        spec = replace(spec, balance=_positive("balance", options["balance"]))
    if "norm_rescale" in options:
        spec = replace(spec, norm_rescale=bool(options["norm_rescale"]))
    if "dequantize" in options:
        spec = replace(spec, dequantize=bool(options["dequantize"]))
    if "max_shard_size" in options:
        spec = replace(spec, max_shard_size=parse_size(options["max_shard_size"]))
    if "pad_vocab_to_multiple_of" in options:
        spec = replace(spec, pad_vocab_to_multiple_of=_positive("pad_vocab_to_multiple_of", options["pad_vocab_to_multiple_of"]))
    if "scores" in options:
        spec = replace(spec, scores=str(options["scores"]))
    if "calibration" in options:
        files = options["calibration"]
        files = [files] if isinstance(files, (str, Path)) else files
        if not isinstance(files, (list, tuple)) or not files:
            raise SpecError("calibration must name one or more data files")
        spec = replace(spec, calibration=tuple(str(f) for f in files))
    for key in ("calibration_samples", "calibration_seq_len"):
        if key in options:
            spec = replace(spec, **{key: _positive(key, options[key])})
    refit = options.get("refit")
    if refit not in (None, False):
        refit = DEFAULT_REFIT if refit is True else str(refit)
        if refit not in REFIT_MODES:
            raise SpecError(f"refit must be one of {', '.join(REFIT_MODES)} (or true), got {refit!r}")
        if not spec.calibration:
            raise SpecError("--refit solves least squares on calibration activations; give --calibration FILE")
        spec = replace(spec, refit=refit)
    if "depth" in options:
        if options["depth"] not in DEPTH_RULES:
            raise SpecError(f"depth must be one of {', '.join(DEPTH_RULES)}, got {options['depth']!r}")
        if options.get("method") != "activation":
            raise SpecError("--depth chooses layers by activations; add --method activation")
        if options["depth"] == "ppl" and not spec.calibration:
            raise SpecError("--depth ppl measures perplexity on calibration data; give --calibration FILE")
        spec = replace(spec, depth=options["depth"])
    if spec.method == "activation" and not (spec.scores or spec.calibration or spec.keep):
        raise SpecError("--method activation needs --scores SCORES (from 'prune-surgery calibrate') or --calibration FILE")
    if spec.scores and spec.method != "activation":
        raise SpecError("--scores ranks units by activations; add --method activation")
    if spec.calibration and spec.method != "activation" and not spec.refit and "refit" not in options:
        raise SpecError("--calibration is used by --method activation and --refit; add one of them")
    for key in ("keep", "keep_vocab"):
        value = options.get(key)
        if isinstance(value, str):
            value = Path(value)
        if value is not None:
            spec = replace(spec, **{key: load_keep(value) if key == "keep" else _load_vocab(value)})
    return spec


def _load_vocab(value: Any) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SpecError("keep_vocab must be a list of token ids (integers) or the path of a keep-vocab.json")
        return tuple(value)
    from .vocab import load_keep_vocab

    return tuple(load_keep_vocab(Path(value)))


def read_spec_file(path: Path) -> dict[str, Any]:
    """The options of a YAML or JSON spec file, keys with underscores, paths made absolute
    (a `keep` file named in a spec is relative to the spec's folder)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"spec file {path} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec file {path} is not UTF-8 text; give a YAML or JSON spec") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec file {path} must hold a mapping of option names to values")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key in ("keep", "keep_vocab", "scores"):
        if isinstance(data.get(key), str):
            data[key] = Path(path).parent / data[key]
    if isinstance(data.get("calibration"), (str, list)):
        files = [data["calibration"]] if isinstance(data["calibration"], str) else data["calibration"]
        data["calibration"] = [str(Path(path).parent / f) for f in files]
    return data


def load_spec_file(path: Path) -> PruneSpec:
    """Read a YAML or JSON spec file (our keys, or the original method's prune config)."""
    return spec_from_dict(read_spec_file(path))


def dump_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, compact) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
