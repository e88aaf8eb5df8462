"""Exports work where users use them: ``transformers.pipeline`` for fill-mask (BERT), text-generation
(GPT) and image-classification (ViT), each giving what our own model gives on the same input."""

from __future__ import annotations

import pytest
import torch

from pretrain.checkpoint import from_checkpoint
from pretrain.export import export_checkpoint
from tests.export.conftest import SAMPLE, run_name

TEXT_PROMPT = "Le cœur a ses raisons"
MASKED = "Paris est la <mask> de la France."


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pipeline_exports")
    return {m: export_checkpoint(checkpoints[run_name(m, 1, 2)], root / m) for m in ("gpt", "bert", "vit")}


def _ours(checkpoints, family: str):
    return from_checkpoint(checkpoints[run_name(family, 1, 2)]).eval()


def test_bert_tokenizer_frames_rows_as_training_did(exports, spm_model):
    """[CLS] ... [SEP] around every text (the loader's ``bert_frame``), and the space before <mask>
    absorbed: the masked word's own ``▁`` went with it in training."""
    import numpy as np
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from pretrain.data.text import TextSpecials, bert_frame

    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    tok = AutoTokenizer.from_pretrained(str(exports["bert"]))
    specials = TextSpecials(eos_id=2, vocab_size=512, special_ids=(0, 1, 2, 3, 4, 5, 6), mask_id=4, cls_id=5, sep_id=6)
    for text in [t for t in SAMPLE if " <mask>" not in t]:
        row = bert_frame(np.asarray([sp.encode(text)], dtype=np.int64).reshape(1, -1), specials)[0].tolist()
        assert tok(text)["input_ids"] == row, text
    ids = sp.encode(MASKED)
    assert sp.id_to_piece(ids[ids.index(4) - 1]) == "▁"  # sentencepiece's reading: a lone ▁ before <mask>
    assert tok(MASKED)["input_ids"] == _training_row(spm_model, MASKED)
    pair = tok("a b", "c d")
    assert pair["input_ids"] == [5, *sp.encode("a b"), 6, *sp.encode("c d"), 6]
    assert pair["token_type_ids"] == [0] * (len(sp.encode("a b")) + 2) + [1] * (len(sp.encode("c d")) + 1)


def _training_row(spm_model: bytes, text: str) -> list[int]:
    """``text`` as a BERT training row: [CLS] tokens [SEP], a masked token standing for a whole one."""
    import sentencepiece as spm

    ids = spm.SentencePieceProcessor(model_proto=spm_model).encode(text)
    at = ids.index(4)
    return [5, *ids[:at - 1], *ids[at:], 6]


def test_fill_mask_pipeline_predicts_what_our_model_predicts(checkpoints, exports, spm_model):
    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(exports["bert"]), top_k=5)
    preds = fill(MASKED)
    assert len(preds) == 5 and all(p["sequence"].startswith("Paris est la") for p in preds)
    row = _training_row(spm_model, MASKED)
    with torch.no_grad():
        probs = _ours(checkpoints, "bert")(torch.tensor([row]))[0, row.index(4)].softmax(-1)
    top = probs.topk(5)
    assert [p["token"] for p in preds] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([p["score"] for p in preds]), top.values, atol=1e-5, rtol=1e-4)


def test_text_generation_pipeline_continues_greedily(checkpoints, exports):
    """The pipeline's continuation is our model's greedy one, token for token."""
    from transformers import pipeline

    gen = pipeline("text-generation", model=str(exports["gpt"]))
    text = gen(TEXT_PROMPT, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    got = gen(TEXT_PROMPT, max_new_tokens=8, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    ids = gen.tokenizer(TEXT_PROMPT, return_tensors="pt")["input_ids"]
    ours = _ours(checkpoints, "gpt")
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, ours(ids)[:, -1:].argmax(-1)], dim=1)
    assert list(got) == ids[0].tolist()
    assert text.startswith(TEXT_PROMPT) and len(text) > len(TEXT_PROMPT)


def test_image_classification_pipeline_on_jpegs_equals_our_eval(checkpoints, exports, tmp_path):
    """JPEGs (colour and grey, not square) through the exported preprocessor give our model's eval
    transform's input, so the same probabilities for every class. (Sizes whose resized margin is
    even: HF floors a centre-crop offset that torchvision rounds, see ``preprocessor_config``.)"""
    import numpy as np
    from PIL import Image
    from transformers import pipeline

    from pretrain.data.image import eval_transform, to_normalized

    model = _ours(checkpoints, "vit")
    classify = pipeline("image-classification", model=str(exports["vit"]), top_k=model.config.num_classes)
    labels = classify.model.config.id2label
    for i, (size, mode) in enumerate([((40, 50), "RGB"), ((64, 83), "L"), ((36, 36), "RGB"), ((200, 33), "L")]):
        rng = np.random.default_rng(i)
        ramp = np.linspace(0, 255, size[1])[None, :, None] * np.linspace(0.2, 1, size[0])[:, None, None]
        pixels = np.clip(ramp + rng.normal(0, 20, (*size, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(pixels).convert(mode).save(path, quality=90)
        got = {p["label"]: p["score"] for p in classify(str(path))}
        with Image.open(path) as img:
            x = to_normalized([eval_transform(img.convert("RGB"), model.config.image_size)])
        with torch.no_grad():
            probs = model(x)[0].softmax(-1)
        torch.testing.assert_close(torch.tensor([got[labels[k]] for k in range(len(probs))]), probs, atol=1e-5,
                                   rtol=1e-4, msg=f"{size} {mode}")
        assert max(got, key=got.get) == labels[int(probs.argmax())]
