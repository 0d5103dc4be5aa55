"""Child process of ``prune-surgery gguf``: runs llama.cpp's converter with the identity pinned.

    python -m prune_surgery.llamacpp.driver CONVERTER_DIR MODEL_DIR OUTFILE OUTTYPE ERROR_FILE

Before converting, the architecture is looked up in the converter's own registry.  When
``MODEL_DIR/prune_surgery.json`` records the source tokenizer (see :mod:`.identity`), the
converter's ``get_vocab_base_pre`` is given the source's check ids instead of the pruned
tokenizer's, so its own table names the pre-tokenizer.  A refusal is written to ERROR_FILE as
one line and the process exits with status 2; the converter's log goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from .converter import LLAMA_CPP_COMMIT, PACKAGE, VERSION
from .identity import RECORD_KEY, ids_hash, text_hash


def converter_label(converter_dir: Path) -> str:
    """How messages name the converter: the pinned one by its llama.cpp commit, another by its folder."""
    if converter_dir.name == f"{PACKAGE}-{VERSION}":
        return f"llama.cpp's converter (llama.cpp {LLAMA_CPP_COMMIT})"
    return f"llama.cpp's converter in {converter_dir}"


class Refused(Exception):
    """A reason the output cannot be converted, shown to the user as one line."""


class RecordedTokenizer:
    """Stands in for the source tokenizer in ``get_vocab_base_pre``: encodes only the check text."""

    def __init__(self, identity: dict[str, Any], label: str) -> None:
        ids = identity.get("check_ids")
        if not isinstance(ids, list) or ids_hash(ids) != identity.get("check_hash"):
            raise Refused(f"prune_surgery.json: '{RECORD_KEY}' is damaged (its ids do not match its hash); re-run the pruning")
        self.identity, self.label = identity, label

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]:
        """The source's ids of the check text (refused if the converter checks another text)."""
        if text_hash(text) != self.identity.get("check_text_sha256"):
            raise Refused(f"{self.label} hashes another check text than the one recorded at pruning time; "
                          "use the pinned converter (unset PRUNE_SURGERY_LLAMA_CPP)")
        return list(self.identity["check_ids"])


def _record(model_dir: Path) -> dict[str, Any]:
    try:
        record = json.loads((model_dir / "prune_surgery.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _pin_pre_tokenizer(text_model: Any, record: dict[str, Any], label: str) -> None:
    """Wrap ``TextModel.get_vocab_base_pre``: recorded source ids in, a clear refusal out."""
    original: Callable[[Any, Any], str] = text_model.get_vocab_base_pre
    identity = record.get(RECORD_KEY)
    vocab_pruned = isinstance(record.get("keep"), dict) and "vocab" in record["keep"]

    def pinned(self: Any, tokenizer: Any) -> str:
        try:
            return original(self, RecordedTokenizer(identity, label) if isinstance(identity, dict) else tokenizer)
        except NotImplementedError:
            if vocab_pruned and not isinstance(identity, dict):
                raise Refused(f"this vocabulary-pruned output records no source tokenizer ('{RECORD_KEY}' in "
                              "prune_surgery.json); prune it again with this prune-surgery version") from None
            raise Refused(f"the source tokenizer's BPE pre-tokenizer is not one {label} knows, so llama.cpp "
                          "cannot represent it; only tokenizers listed in its get_vocab_base_pre() convert") from None

    text_model.get_vocab_base_pre = pinned


def _guard_vocab(model_class: Any, label: str) -> None:
    """Any failure while the converter reads the tokenizer becomes a one-line refusal."""
    original = model_class.set_vocab

    def guarded(self: Any) -> None:
        try:
            original(self)
        except Refused:
            raise
        except Exception as exc:  # the converter raises many kinds here
            raise Refused(f"{label} cannot represent this tokenizer: {type(exc).__name__}: {exc}") from None

    model_class.set_vocab = guarded


def _model_class(model_dir: Path, label: str) -> Any:
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    hparams = ModelBase.load_hparams(model_dir, False)
    try:
        arch = get_model_architecture(hparams, ModelType.TEXT)
    except Exception:
        arch = None
    if not arch:
        raise Refused(f"{model_dir}/config.json names no architecture ('architectures'); "
                      "add the transformers class name, e.g. LlamaForCausalLM")
    try:
        return get_model_class(arch)
    except NotImplementedError:
        raise Refused(f"{label} does not know the architecture {arch!r}; "
                      "no GGUF can be made for it until llama.cpp supports it") from None


def convert(converter_dir: Path, model_dir: Path, outfile: Path, outtype: str) -> None:
    """Run the converter's own ``main()`` on `model_dir` (raises :class:`Refused`)."""
    sys.path.insert(0, str(converter_dir))
    try:
        import torch  # noqa: F401  (the converter needs both)
        import transformers  # noqa: F401
    except ImportError as exc:
        raise Refused(f"prune-surgery gguf needs torch and transformers ({exc}); "
                      "install them with pip install 'prune-surgery[gguf]'") from None
    import convert_hf_to_gguf as script  # puts the converter's own gguf-py first on sys.path
    from conversion import TextModel

    label = converter_label(converter_dir)
    model_class = _model_class(model_dir, label)
    _pin_pre_tokenizer(TextModel, _record(model_dir), label)
    _guard_vocab(model_class, label)
    sys.argv = [script.__file__, str(model_dir), "--outfile", str(outfile), "--outtype", outtype]
    script.main()


def main(argv: list[str]) -> NoReturn:
    """Entry point of the child process."""
    converter_dir, model_dir, outfile, outtype, error_file = argv
    try:
        convert(Path(converter_dir), Path(model_dir), Path(outfile), outtype)
    except Refused as refusal:
        Path(error_file).write_text(str(refusal), encoding="utf-8")
        raise SystemExit(2) from None
    raise SystemExit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
