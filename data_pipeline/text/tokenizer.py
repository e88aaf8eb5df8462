"""Sentencepiece tokenizer: trained on a deterministic sample of the kept text, or given.

Special pieces have fixed ids (docs/FORMATS.md): pad 0, bos 1, eos 2, unk 3, then the user
pieces <mask> 4, <cls> 5, <sep> 6; byte fallback so no text is ever <unk>. The training sample
is the kept documents ordered by a hash of their id (so it is spread over all inputs, not the
first files) up to ``sample_chars`` characters, one line per sentencepiece sentence. Training
runs with a fixed thread count because sentencepiece's result depends on it. Normalisation is
plain NFKC without whitespace folding, so newlines survive (as the byte piece <0x0A>) and
``decode(encode(text)) == NFKC(text)``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

SPECIAL = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3}
USER_PIECES = ("<mask>", "<cls>", "<sep>")
MODEL_TYPES = ("bpe", "unigram")


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_type: str = "bpe", threads: int = 4) -> bytes:
    """Serialized sentencepiece model trained on ``texts`` (already in the deterministic order)."""
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise ValueError(f"--model-type {model_type!r}: expected one of {MODEL_TYPES}")
    lines = [line for text in texts for line in text.split("\n") if line.strip()]
    if not lines:
        raise ValueError("no kept text to train a tokenizer on; relax the filters or pass --tokenizer FILE")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, character_coverage=0.9995, split_digits=True, hard_vocab_limit=False,
        user_defined_symbols=list(USER_PIECES), **SPECIAL, pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>",
        unk_piece="<unk>", num_threads=threads, shuffle_input_sentence=False, input_sentence_size=0,
        max_sentence_length=1 << 16, minloglevel=2, allow_whitespace_only_pieces=True,
        normalization_rule_name="nfkc", remove_extra_whitespaces=False,
    )
    return out.getvalue()


def tokenizer_info(model: bytes) -> dict:
    """The manifest's ``tokenizer`` block (without path and sha256), checking the fixed special ids."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    ids = {"pad_id": sp.pad_id(), "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "unk_id": sp.unk_id()}
    for name, piece in zip(("mask_id", "cls_id", "sep_id"), USER_PIECES):
        ids[name] = sp.piece_to_id(piece) if sp.piece_to_id(piece) != sp.unk_id() else -1
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(model)
    kind = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}.get(proto.trainer_spec.model_type, "unknown")
    return {"vocab_size": sp.vocab_size(), "model_type": kind, **ids}


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"
