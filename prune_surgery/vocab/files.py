"""Tokenizer files of a checkpoint folder: which exist, which format they are, how to read them.

A folder may hold a SentencePiece ``tokenizer.model`` (protobuf), a Hugging Face
``tokenizer.json``, or both, plus side files (``tokenizer_config.json``, ...).  A
tiktoken-format vocabulary (base64 token and rank per line) is recognised so that it can be
refused with an explanation instead of failing somewhere deep inside a parser.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentencepiece import sentencepiece_model_pb2

from prune_surgery.errors import TokenizerError

#: Every file this package reads and rewrites, in the order they are written.
TOKENIZER_FILE_NAMES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)

#: Config files whose special-token ids matter for vocabulary pruning.
CONFIG_FILE_NAMES = ("config.json", "generation_config.json")

_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+={0,2} \d+\r?$")


@dataclass(frozen=True)
class TokenizerFiles:
    """The tokenizer files found in one folder (``None`` where absent)."""

    folder: Path
    spm: Path | None
    hf_json: Path | None
    tiktoken: Path | None

    def present(self) -> list[str]:
        """Names of the tokenizer files that exist in the folder."""
        return [name for name in TOKENIZER_FILE_NAMES if (self.folder / name).is_file()]


def is_tiktoken_file(path: Path) -> bool:
    """True when ``path`` looks like a tiktoken BPE file: ``<base64 token> <rank>`` per line."""
    with open(path, "rb") as f:
        head = f.read(4096)
    lines = [line for line in head.split(b"\n")[:8] if line.strip()]
    if len(head) == 4096 and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut in the middle
    return bool(lines) and all(_TIKTOKEN_LINE.match(line) for line in lines)


def find_tokenizer_files(folder: Path) -> TokenizerFiles:
    """Look for tokenizer files in ``folder``; raise :class:`TokenizerError` if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"{folder} is not a folder; pass the checkpoint folder that holds the tokenizer")
    hf_json = folder / "tokenizer.json"
    spm = folder / "tokenizer.model"
    tiktoken: Path | None = None
    for candidate in sorted(folder.glob("*.tiktoken")) + [folder / "tiktoken.model"]:
        if candidate.is_file():
            tiktoken = candidate
            break
    if spm.is_file() and is_tiktoken_file(spm):
        tiktoken, spm_path = spm, None
    else:
        spm_path = spm if spm.is_file() else None
    found = TokenizerFiles(folder, spm_path, hf_json if hf_json.is_file() else None, tiktoken)
    if found.spm is None and found.hf_json is None:
        if found.tiktoken is not None:
            raise TokenizerError(tiktoken_message(found.tiktoken))
        raise TokenizerError(
            f"no tokenizer in {folder}: vocabulary pruning needs tokenizer.model (SentencePiece) or "
            "tokenizer.json (Hugging Face); save the tokenizer into the checkpoint folder first"
        )
    return found


def tiktoken_message(path: Path) -> str:
    """The one-line explanation given when only a tiktoken vocabulary is available."""
    return (
        f"{path.name} is a tiktoken vocabulary, which cannot be pruned: its ranks are both the token ids "
        "and the merge order, and all 256 single-byte tokens must survive at fixed ranks; provide the "
        "tokenizer as tokenizer.json (e.g. AutoTokenizer.from_pretrained(...).save_pretrained(dir)), "
        "which is then pruned like any byte-level BPE"
    )


def import_tokenizers() -> Any:
    """The `tokenizers` module, or a :class:`TokenizerError` saying how to install it."""
    try:
        import tokenizers
    except ImportError as exc:
        raise TokenizerError(
            "reading tokenizer.json needs the `tokenizers` package; install it with `pip install tokenizers`"
        ) from exc
    return tokenizers


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning syntax errors into :class:`TokenizerError`."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path} is not valid JSON ({exc}); restore the original file") from exc


def write_json(path: Path, data: Any) -> None:
    """Write JSON the way Hugging Face writes tokenizer files: UTF-8, indented, keys in order."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.write("\n")


def read_optional_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or an empty dict when the file does not exist."""
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} should hold a JSON object; restore the original file")
    return data


def _file_key(path: Path) -> tuple[str, int, int]:
    """Cache key of a file: its resolved path, size and modification time."""
    stat = path.stat()
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def load_spm_proto(path: Path) -> sentencepiece_model_pb2.ModelProto:
    """Parse a SentencePiece ``ModelProto`` from ``path`` (cached: callers must not modify it)."""
    return _load_spm_proto(*_file_key(path))


@functools.lru_cache(maxsize=8)
def _load_spm_proto(resolved: str, size: int, mtime_ns: int) -> sentencepiece_model_pb2.ModelProto:
    path = Path(resolved)
    if is_tiktoken_file(path):
        raise TokenizerError(tiktoken_message(path))
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise TokenizerError(f"{path} is not a SentencePiece model ({exc}); restore the original file") from exc
    if not proto.pieces:
        raise TokenizerError(f"{path} is not a SentencePiece model (no pieces); restore the original file")
    return proto


def load_tokenizer_json(path: Path) -> dict[str, Any]:
    """Parse a Hugging Face ``tokenizer.json`` and check that it has a model with a vocabulary.

    Cached (a 150k-token file is parsed once per run): callers must not modify the result.
    """
    return _load_tokenizer_json(*_file_key(path))


@functools.lru_cache(maxsize=8)
def _load_tokenizer_json(resolved: str, size: int, mtime_ns: int) -> dict[str, Any]:
    path = Path(resolved)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or "vocab" not in data["model"]:
        raise TokenizerError(f"{path} has no model vocabulary; save the tokenizer again with `tokenizers`")
    return data


def model_type(data: dict[str, Any]) -> str:
    """The model type of a parsed tokenizer.json: ``BPE``, ``Unigram``, ``WordPiece`` or ``WordLevel``."""
    model = data["model"]
    kind = model.get("type")
    if kind is None:  # very old files omit the type: infer it from the fields
        if "merges" in model:
            kind = "BPE"
        elif isinstance(model["vocab"], list):
            kind = "Unigram"
        elif "continuing_subword_prefix" in model:
            kind = "WordPiece"
        else:
            kind = "WordLevel"
    if kind not in ("BPE", "Unigram", "WordPiece", "WordLevel"):
        raise TokenizerError(f"tokenizer.json model type {kind!r} is not supported for vocabulary pruning")
    return kind


def hf_model_ids(data: dict[str, Any]) -> dict[str, int]:
    """Token -> id of the model vocabulary of a parsed tokenizer.json (added tokens excluded)."""
    vocab = data["model"]["vocab"]
    if isinstance(vocab, list):
        return {entry[0]: i for i, entry in enumerate(vocab)}
    return {str(token): int(i) for token, i in vocab.items()}


def hf_token_ids(data: dict[str, Any]) -> dict[str, int]:
    """Token -> id over the model vocabulary and the added tokens of a parsed tokenizer.json."""
    ids = hf_model_ids(data)
    for added in data.get("added_tokens") or []:
        ids[added["content"]] = int(added["id"])
    return ids


def contains_type(node: Any, type_name: str) -> bool:
    """True when a tokenizer.json component (possibly a ``Sequence``) contains ``type_name``."""
    if isinstance(node, dict):
        if node.get("type") == type_name:
            return True
        return any(contains_type(value, type_name) for value in node.values())
    if isinstance(node, list):
        return any(contains_type(value, type_name) for value in node)
    return False


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to the printable characters byte-level BPE uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def byte_piece(value: int) -> str:
    """The byte-fallback piece of a byte value, as SentencePiece and `tokenizers` spell it."""
    return f"<0x{value:02X}>"
