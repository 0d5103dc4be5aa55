"""Rewrite a SentencePiece ``tokenizer.model`` to a kept vocabulary.

Pieces are filtered in order, so piece ``i`` of the output is piece ``kept[i]`` of the input
(ids are positions in SentencePiece).  Scores and types are unchanged, which keeps BPE merge
priorities and Unigram scores as they were; byte pieces must all survive for byte fallback to
keep working; the embedded self-test samples (if any) are dropped because they name the old ids.
"""

from __future__ import annotations

from collections.abc import Sequence

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from prune_surgery.errors import TokenizerError
from prune_surgery.vocab.keepfile import id_map

_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece

#: Field number of ``ModelProto.self_test_data`` in sentencepiece_model.proto.
SELF_TEST_DATA_FIELD = 4


def rewrite_spm_proto(
    proto: sentencepiece_model_pb2.ModelProto, kept_ids: Sequence[int]
) -> sentencepiece_model_pb2.ModelProto:
    """A new ModelProto holding only the kept pieces, ids compacted."""
    count = len(proto.pieces)
    kept_here = [i for i in kept_ids if i < count]  # ids past the pieces are embedding padding rows
    kept_set = set(kept_here)
    for i, piece in enumerate(proto.pieces):
        if i in kept_set:
            continue
        if piece.type == _Piece.UNKNOWN:
            raise TokenizerError(
                f"tokenizer.model: the unknown piece {piece.piece!r} (id {i}) must be kept; add {i} to the keep list"
            )
        if piece.type == _Piece.BYTE and proto.trainer_spec.byte_fallback:
            raise TokenizerError(
                f"tokenizer.model: byte piece {piece.piece!r} (id {i}) was dropped, which breaks byte fallback; "
                "keep all 256 byte pieces (`prune-surgery vocab count` does)"
            )
    out = sentencepiece_model_pb2.ModelProto()
    out.CopyFrom(proto)
    del out.pieces[:]
    for i in kept_here:
        out.pieces.add().CopyFrom(proto.pieces[i])
    mapping = id_map(kept_here)
    spec = out.trainer_spec
    spec.vocab_size = len(kept_here)
    for name in ("unk_id", "bos_id", "eos_id", "pad_id"):
        old = getattr(spec, name)
        if old >= 0:
            setattr(spec, name, mapping.get(old, -1))
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def strip_top_level_field(data: bytes, field_number: int) -> bytes:
    """Serialized protobuf ``data`` without the top-level occurrences of ``field_number``.

    Used for ``self_test_data`` (field 4 of ModelProto): the bundled ``sentencepiece_model_pb2``
    does not declare it, so protobuf keeps it as an unknown field and writes it back, and its
    samples name the old ids, so SentencePiece would reject the pruned model on load.
    """
    out = bytearray()
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise TokenizerError(
                "tokenizer.model uses protobuf groups, which SentencePiece never writes; restore the original file"
            )
        if key >> 3 != field_number:
            out += data[start:pos]
    return bytes(out)


def rewrite_spm_bytes(data: bytes, kept_ids: Sequence[int]) -> bytes:
    """Rewrite a serialized SentencePiece model and check that SentencePiece loads the result."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(data)
    out = strip_top_level_field(rewrite_spm_proto(proto, kept_ids).SerializeToString(), SELF_TEST_DATA_FIELD)
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(out)
    except Exception as exc:  # SentencePiece reports failures as RuntimeError
        raise TokenizerError(f"the pruned tokenizer.model does not load in SentencePiece ({exc})") from exc
    return out
