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
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

SPECIAL = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3}
USER_PIECES = ("<mask>", "<cls>", "<sep>")
MODEL_TYPES = ("bpe", "unigram")
CHARACTER_COVERAGE = 0.9995
MAX_SENTENCE_BYTES = 1 << 16
META_PIECES = len(SPECIAL) + len(USER_PIECES) + 256  # specials, user pieces, byte-fallback pieces
SPACE = "\u2581"  # sentencepiece's whitespace symbol
_SPM_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class VocabularyTooSmall(ValueError):
    """``--vocab-size`` below what sentencepiece needs for this text (its pieces for the rare
    characters plus the special and byte pieces); ``minimum`` is the smallest size that works."""

    def __init__(self, vocab_size: int, minimum: int):
        super().__init__(f"--vocab-size {vocab_size} is too small for this text: the tokenizer needs at least "
                         f"{minimum} pieces ({minimum - META_PIECES} characters to cover {CHARACTER_COVERAGE:.2%} "
                         f"of the text, plus {META_PIECES} special and byte pieces); rerun with --vocab-size "
                         f"{minimum} or more (the finished stages are kept and reused)")
        self.vocab_size, self.minimum = vocab_size, minimum

    def __reduce__(self):  # raised in the tokenizer's Ray task, re-raised in the driver
        return VocabularyTooSmall, (self.vocab_size, self.minimum)


def minimum_vocab_size(lines: list[str]) -> int:
    """The smallest vocab_size sentencepiece accepts for ``lines``: the most frequent characters
    (NFKC, spaces as U+2581, a leading U+2581 per line) up to the character coverage, plus the
    meta pieces; the same count its trainer makes before it refuses a smaller one."""
    counts: Counter = Counter()
    for line in lines:
        counts.update(SPACE + unicodedata.normalize("NFKC", line).replace(" ", SPACE))
    total, covered, required = sum(counts.values()), 0, 0
    for _, n in counts.most_common():
        if total and covered / total >= CHARACTER_COVERAGE:
            break
        covered += n
        required += 1
    return required + META_PIECES


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_type: str = "bpe", threads: int = 4) -> bytes:
    """Serialized sentencepiece model trained on ``texts`` (already in the deterministic order)."""
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise ValueError(f"--model-type {model_type!r}: expected one of {MODEL_TYPES}")
    # sentencepiece skips lines longer than max_sentence_length itself; dropping them here keeps
    # the character count below equal to its own
    lines = [line for text in texts for line in text.split("\n")
             if line.strip() and len(line.encode("utf-8")) <= MAX_SENTENCE_BYTES]
    if not lines:
        raise ValueError("no kept text to train a tokenizer on; relax the filters or pass --tokenizer FILE")
    minimum = minimum_vocab_size(lines)
    if vocab_size < minimum:
        raise VocabularyTooSmall(vocab_size, minimum)
    out = io.BytesIO()
    try:
        _train(spm, lines, out, vocab_size, model_type, threads)
    except RuntimeError as e:  # our count and sentencepiece's disagree (another normalisation): its number wins
        m = _SPM_TOO_SMALL.search(str(e))
        if m:
            raise VocabularyTooSmall(vocab_size, int(m.group(2))) from None
        raise
    return out.getvalue()


def _train(spm, lines: list[str], out, vocab_size: int, model_type: str, threads: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, character_coverage=CHARACTER_COVERAGE, split_digits=True, hard_vocab_limit=False,
        user_defined_symbols=list(USER_PIECES), **SPECIAL, pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>",
        unk_piece="<unk>", num_threads=threads, shuffle_input_sentence=False, input_sentence_size=0,
        max_sentence_length=MAX_SENTENCE_BYTES, minloglevel=2, allow_whitespace_only_pieces=True,
        normalization_rule_name="nfkc", remove_extra_whitespaces=False,
    )


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


def train_from_sample(paths: list[str], budget: int, vocab_size: int, model_type: str, threads: int,
                      out_path: str) -> dict:
    """The Ray task that trains the tokenizer: reads the candidate documents the per-file tasks
    wrote (``sort_key``, ``uid``, ``text``), keeps those first in (sort_key, uid) order up to
    ``budget`` characters (the last one cut to fit) and trains on them. The driver never holds
    the sample's text."""
    import numpy as np
    import pyarrow as pa

    from data_pipeline import storage
    from data_pipeline.text.process import read_table

    tables = [read_table(p) for p in paths]
    t = pa.concat_tables(tables) if tables else None
    texts: list[str] = []
    if t is not None and t.num_rows:
        order = np.lexsort((t.column("uid").to_numpy(), t.column("sort_key").to_numpy()))
        column = t.column("text")
        left = budget
        for i in order:
            if left <= 0:
                break
            text = column[int(i)].as_py()
            texts.append(text[:left])
            left -= len(text)
    model = train_tokenizer(texts, vocab_size, model_type, threads)
    storage.write_bytes(out_path, model)
    return {"documents": len(texts)}
