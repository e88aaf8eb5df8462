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

BERT exports (``frame=(cls, sep)``) encode as BERT training saw its rows: a post-processor puts
``<cls>`` in front and ``<sep>`` after (pairs: ``<cls> A <sep> B <sep>``, B with type id 1), and the
space before ``<mask>`` is absorbed into it: training replaced whole tokens, ``▁capital`` included
its word-start ``▁``, so ``"the <mask> of"`` must reach the model as ``▁the <mask> ▁of``, not as
``▁the ▁ <mask> ▁of`` (sentencepiece's own reading, which GPT exports keep).

Known differences (edge cases, not in training text): a text that *starts* with a user-defined
piece gets no ``▁`` before it (sentencepiece emits one), and the literal strings ``<s>``/``</s>``
are read as the special tokens (sentencepiece spells them out in bytes).
"""

from __future__ import annotations

import json
from pathlib import Path

MASK_PIECE = "<mask>"
USER_PIECES = {"mask_id": MASK_PIECE, "cls_id": "<cls>", "sep_id": "<sep>"}  # data_pipeline.text.tokenizer's
SPECIAL_NAMES = {"pad_id": "pad_token", "bos_id": "bos_token", "eos_id": "eos_token", "unk_id": "unk_token",
                 "mask_id": "mask_token", "cls_id": "cls_token", "sep_id": "sep_token"}


def build_fast_tokenizer(model: bytes, frame: tuple[str, str] | None = None):
    """A ``tokenizers.Tokenizer`` equivalent to the sentencepiece model ``model`` (serialized proto);
    with ``frame=(cls_piece, sep_piece)`` the BERT reading of the module docstring."""
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
    if frame is not None:
        _frame_like_bert(tok, proto, *frame)
    return tok


def _frame_like_bert(tok, proto, cls: str, sep: str) -> None:
    from tokenizers import normalizers, processors

    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])])
    if MASK_PIECE in ids:
        tok.normalizer = normalizers.Sequence([tok.normalizer, normalizers.Replace(f"▁{MASK_PIECE}", MASK_PIECE)])


def special_tokens(model: bytes, ids: dict | None = None) -> dict[str, str]:
    """``{"bos_token": "<s>", ...}`` for the special ids (``data.json``'s tokenizer block, else the
    model's own pad/bos/eos/unk ids and its ``<mask>``/``<cls>``/``<sep>`` pieces -- an import-hf
    directory records no more than bos/eos/pad); ids that are -1 or absent are left out."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    ids = dict(ids or {})
    for name in ("pad_id", "bos_id", "eos_id", "unk_id"):
        ids.setdefault(name, getattr(sp, name)())
    for name, piece in USER_PIECES.items():  # the pipeline's fixed pieces, when no record names them
        if name not in ids and sp.piece_to_id(piece) != sp.unk_id():
            ids[name] = sp.piece_to_id(piece)
    out = {}
    for key, name in SPECIAL_NAMES.items():
        i = ids.get(key, -1)
        if i is not None and 0 <= i < sp.get_piece_size():
            out[name] = sp.id_to_piece(i)
    return out


def write_hf_tokenizer(model: bytes, out_dir: str | Path, ids: dict | None = None, max_length: int | None = None,
                       bert: bool = False) -> list[str]:
    """Write ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json`` and
    ``tokenizer.model`` into ``out_dir``; returns the file names. ``bert``: frame every text with
    the ``cls``/``sep`` pieces (when the tokenizer has both), as the BERT loader does."""
    out = Path(out_dir)
    specials = special_tokens(model, ids)
    frame = (specials["cls_token"], specials["sep_token"]) if bert and {"cls_token", "sep_token"} <= set(specials) \
        else None
    tok = build_fast_tokenizer(model, frame)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "add_bos_token": False, "add_eos_token": False, **specials}
    if max_length:
        config["model_max_length"] = max_length
    if frame is not None:  # pairs get type ids 0/1, as BERT's own tokenizers give them
        config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")
    (out / "tokenizer.model").write_bytes(model)
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"]
