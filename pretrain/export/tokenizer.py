"""Our sentencepiece model -> Hugging Face tokenizer files that encode to the same ids.

``tokenizer.json`` is built from the sentencepiece proto itself with ``transformers``'
``SpmConverter.build_tokenizer_from_spm_proto``, which follows the model's own normaliser
(the precompiled NFKC map, whitespace escaping, dummy prefix), ranks BPE merges by piece score
(or keeps the unigram scores), and keeps byte fallback. Two additions make it encode like
``SentencePieceProcessor.encode``: a normaliser rule keeps sentencepiece's dummy-prefix ``▁`` in
front of a text that starts with a space, and the user-defined pieces (``<mask>``, ``<cls>``,
``<sep>``) are added tokens matched in the *normalised* text, as sentencepiece matches them (added
before normalisation they would cut the text into chunks normalised one by one). Control pieces
(``<pad>``, ``<s>``, ``</s>``) are special added tokens. No BOS/EOS is added on encode, as
``encode`` adds none and the training data has none inside documents. ``tokenizer.model`` is
copied beside it for users of the slow sentencepiece tokenizers.

Known differences (edge cases, not in training text): a text that *starts* with a user-defined
piece gets no ``▁`` before it (sentencepiece emits one), and the literal strings ``<s>``/``</s>``
are read as the special tokens (sentencepiece spells them out in bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_NAMES = {"pad_id": "pad_token", "bos_id": "bos_token", "eos_id": "eos_token", "unk_id": "unk_token",
                 "mask_id": "mask_token", "cls_id": "cls_token", "sep_id": "sep_token"}


def build_fast_tokenizer(model: bytes):
    """A ``tokenizers.Tokenizer`` equivalent to the sentencepiece model ``model`` (serialized proto)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, normalizers
    from transformers.convert_slow_tokenizer import SpmConverter

    proto = pb.ModelProto()
    proto.ParseFromString(model)
    kind = proto.trainer_spec.model_type
    if kind == 2:  # BPE: {piece: id}
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    elif kind == 1:  # unigram: [(piece, score)]
        vocab = [(p.piece, p.score) for p in proto.pieces]
    else:
        raise ValueError(f"sentencepiece model_type {kind} (word/char) has no Hugging Face fast equivalent")
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=False)
    if tok is None:
        raise ValueError("transformers could not build a tokenizer from this sentencepiece model")
    if proto.normalizer_spec.add_dummy_prefix and proto.normalizer_spec.escape_whitespaces:
        # sentencepiece adds its "▁" even before a leading space; Metaspace would skip it there
        tok.normalizer = normalizers.Sequence([tok.normalizer, normalizers.Replace(Regex(r"\A▁"), "▁▁")])
    # user-defined pieces: matched in the normalised text (see the module docstring)
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces if p.type == 3])
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=True) for p in proto.pieces if p.type == 4])
    return tok


def special_tokens(model: bytes, ids: dict | None = None) -> dict[str, str]:
    """``{"bos_token": "<s>", ...}`` for the special ids (``data.json``'s tokenizer block, or the
    model's own pad/bos/eos/unk ids); ids that are -1 or absent are left out."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    ids = dict(ids or {})
    for name in ("pad_id", "bos_id", "eos_id", "unk_id"):
        ids.setdefault(name, getattr(sp, name)())
    out = {}
    for key, name in SPECIAL_NAMES.items():
        i = ids.get(key, -1)
        if i is not None and 0 <= i < sp.get_piece_size():
            out[name] = sp.id_to_piece(i)
    return out


def write_hf_tokenizer(model: bytes, out_dir: str | Path, ids: dict | None = None, max_length: int | None = None) -> list[str]:
    """Write ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
    ``tokenizer.model`` into ``out_dir``; returns the file names."""
    out = Path(out_dir)
    tok = build_fast_tokenizer(model)
    tok.save(str(out / "tokenizer.json"))
    specials = special_tokens(model, ids)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "add_bos_token": False, "add_eos_token": False, **specials}
    if max_length:
        config["model_max_length"] = max_length
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")
    (out / "tokenizer.model").write_bytes(model)
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"]
