"""Export of trained checkpoints: every layout consolidates to the same weights, and the Hugging
Face export gives the same logits as ``from_checkpoint`` (GPT-2, Llama, BERT, ViT x ZeRO 1/3 x
tensor 1/2), loads with ``AutoTokenizer``/``AutoImageProcessor``, and generates."""

from __future__ import annotations

import json

import pytest
import torch

from pretrain.checkpoint import from_checkpoint, load_full_state_dict, torch_load
from pretrain.export import export_checkpoint
from tests.export.conftest import EXTRA, LAYOUTS, MODELS, SAMPLE, run_name
from tests.export.helpers import hf_logits, inputs, our_logits

RUNS = [run_name(m, s, t) for m in MODELS for s, t in LAYOUTS] + list(EXTRA)


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exports")
    return {name: export_checkpoint(run_dir, root / name) for name, run_dir in checkpoints.items()}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("tp", [1, 2])
def test_zero1_and_zero3_consolidate_to_the_same_weights(checkpoints, model, tp):
    """Same batches, same init: ZeRO 1 (flat partitions per data rank) and ZeRO 3 (every parameter
    split over data ranks) must end at the same fp32 weights, each tensor rank merged."""
    ref_cfg, ref = load_full_state_dict(checkpoints[run_name(model, 1, tp)])
    cfg, sd = load_full_state_dict(checkpoints[run_name(model, 3, tp)])
    assert (ref_cfg.parallel.zero_stage, cfg.parallel.zero_stage, cfg.parallel.tensor_size) == (1, 3, tp)
    assert sd.keys() == ref.keys()
    for k in ref:
        assert sd[k].dtype == torch.float32 and sd[k].shape == ref[k].shape and not sd[k].requires_grad, k
        torch.testing.assert_close(sd[k], ref[k], atol=1e-5, rtol=1e-5, msg=f"{k} at tensor {tp}")
    moved = max(float((ref[k] - v).abs().max()) for k, v in _initial(ref_cfg).items() if k in ref)
    assert moved > 1e-4, "two training steps should have changed the weights"


def _initial(cfg) -> dict:
    from pretrain.models import build_model

    return build_model(cfg.model, seed=cfg.train.seed).state_dict()


@pytest.mark.parametrize("model", list(MODELS))
def test_zero1_masters_equal_module_weights(checkpoints, model):
    """In fp32 the ZeRO 1 module weights DeepSpeed saves per tensor rank are the fp32 masters, so
    consolidating the flat optimizer partitions must give exactly the merged module weights."""
    from pretrain.parallel import merge_tp_state_dicts

    run = checkpoints[run_name(model, 1, 2)]
    cfg, sd = load_full_state_dict(run)
    tag = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    modules = [{k.removeprefix("model."): v for k, v in torch_load(tag / f"mp_rank_{r:02d}_model_states.pt")["module"].items()}
               for r in range(2)]
    merged = merge_tp_state_dicts(modules, cfg.model)
    for k, v in merged.items():
        assert torch.equal(sd[k], v.float()), k


@pytest.mark.parametrize("name", [run_name(m, s, 1) for m in MODELS for s in (1, 3)] + ["llama_bf16_z3_offload_tp1"])
def test_tensor1_equals_deepspeed_zero_to_fp32(checkpoints, name):
    """At tensor 1 DeepSpeed's own consolidation (which reads mp_rank_00 only) is a reference."""
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    _, sd = load_full_state_dict(checkpoints[name])
    with contextlib.redirect_stdout(io.StringIO()):
        ref = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints[name] / "checkpoints"), tag="step00000002")
    ref = {k.removeprefix("model."): v for k, v in ref.items()}
    assert set(ref) <= set(sd) and set(sd) - set(ref) <= {"lm_head.weight", "mlm.decoder.weight"}
    for k, v in ref.items():
        assert torch.equal(sd[k], v.contiguous()), k


@pytest.mark.parametrize("model", list(MODELS))
def test_streamed_tensor_merge_equals_merge_tp_state_dicts(checkpoints, model):
    """The reader fills merged tensors shard by shard; it must equal the parallel package's merge
    of the per-tensor-rank state dicts."""
    from pretrain.checkpoint import CheckpointReader
    from pretrain.parallel import merge_tp_state_dicts

    reader = CheckpointReader(checkpoints[run_name(model, 3, 2)])
    assert len(reader.ranks) == 2
    per_rank = [{k: rank.get(k) for k in rank.keys()} for rank in reader.ranks]
    merged = merge_tp_state_dicts(per_rank, reader.model_config)
    split = [k for k in merged if merged[k].shape != per_rank[0][k].shape]
    assert "layers.0.attn.qkv.weight" in split and "layers.0.mlp.fc_out.weight" in split
    for k, v in merged.items():
        assert torch.equal(reader.tensor(k), v), k


@pytest.mark.parametrize("name", ["gpt_bf16_z2_offload_tp2", "bert_bf16_z0_tp2"])
def test_bf16_runs_export_the_fp32_masters(checkpoints, name):
    """bf16 training keeps fp32 master weights (ZeRO 2 partitions, offloaded; ZeRO 0 optimizer
    copies): those are read, and rounded to bf16 they are exactly the module weights."""
    from pretrain.parallel import merge_tp_state_dicts

    cfg, sd = load_full_state_dict(checkpoints[name])
    tag = checkpoints[name] / "checkpoints" / "step00000002"
    module = merge_tp_state_dicts([{k.removeprefix("model."): v for k, v in
                                    torch_load(tag / f"mp_rank_{r:02d}_model_states.pt")["module"].items()}
                                   for r in range(2)], cfg.model)
    assert {v.dtype for v in module.values()} == {torch.bfloat16}
    assert all(sd[k].dtype == torch.float32 and torch.equal(sd[k].bfloat16(), v) for k, v in module.items())
    assert any(not torch.equal(sd[k], v.float()) for k, v in module.items()), "masters hold more than bf16"


@pytest.mark.parametrize("name", RUNS)
def test_export_gives_the_same_logits(checkpoints, exports, name):
    model = from_checkpoint(checkpoints[name])
    x = inputs(model.config)
    ours, theirs = our_logits(model, x), hf_logits(exports[name], model.config, x)
    assert ours.shape == theirs.shape
    assert float((ours - theirs).abs().max()) <= 1e-4


@pytest.mark.parametrize("model", ["gpt", "llama"])  # BERT's framing: test_pipelines.py
def test_tokenizer_matches_sentencepiece(exports, spm_model, model):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    out = exports[run_name(model, 3, 2)]
    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    tok = AutoTokenizer.from_pretrained(str(out))
    for text in SAMPLE:
        assert tok(text)["input_ids"] == sp.encode(text), text
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (tok.mask_token_id, tok.cls_token_id, tok.sep_token_id) == (4, 5, 6)
    assert len(tok) == sp.get_piece_size()


def test_unigram_tokenizer_conversion(tmp_path):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from data_pipeline.text.tokenizer import train_tokenizer
    from pretrain.export.tokenizer import write_hf_tokenizer
    from tests.export.conftest import TEXTS

    model = train_tokenizer(TEXTS * 40, vocab_size=400, model_type="unigram", threads=1)
    write_hf_tokenizer(model, tmp_path)
    sp, tok = spm.SentencePieceProcessor(model_proto=model), AutoTokenizer.from_pretrained(str(tmp_path))
    assert [tok(t)["input_ids"] for t in SAMPLE] == [sp.encode(t) for t in SAMPLE]


@pytest.mark.parametrize("model", ["gpt", "llama"])
def test_generate_runs_and_is_greedy(checkpoints, exports, model):
    """``generate()`` on the export continues a prompt exactly as greedy decoding with our model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = run_name(model, 1, 2)
    out = exports[name]
    tok = AutoTokenizer.from_pretrained(str(out))
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    prompt = tok("Le cœur a ses raisons", return_tensors="pt")
    gen = hf.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape == (1, prompt["input_ids"].shape[1] + 6)
    ours = from_checkpoint(checkpoints[name])
    ids = prompt["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, ours(ids)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(gen, ids)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_vit_preprocessor_from_training_normalisation(checkpoints, exports):
    from transformers import AutoImageProcessor

    name = run_name("vit", 3, 1)
    tag = checkpoints[name] / "checkpoints" / (checkpoints[name] / "checkpoints" / "latest").read_text().strip()
    norm = json.loads((tag / "data.json").read_text())["normalization"]
    proc = AutoImageProcessor.from_pretrained(str(exports[name]))
    assert list(proc.image_mean) == norm["mean"] and list(proc.image_std) == norm["std"]
    assert proc.size == {"shortest_edge": norm["resize_shorter"]} and proc.do_center_crop
    assert proc.crop_size == {"height": norm["image_size"], "width": norm["image_size"]}


def test_model_card_records_the_run(checkpoints, exports):
    from pretrain.models import build_model, count_parameters

    name = run_name("gpt", 3, 2)
    card = (exports[name] / "README.md").read_text()
    cfg, _ = load_full_state_dict(checkpoints[name])
    state = json.loads((checkpoints[name] / "checkpoints" / "step00000002" / "trainer_state.json").read_text())
    assert f"| parameters | {count_parameters(build_model(cfg.model, device='meta')):,} |" in card
    assert f"| tokens/images seen | {state['tokens_seen']:,} |" in card and state["tokens_seen"] == 2 * 8 * 64
    assert f"| final training loss | {state['last_loss']} |" in card
    assert "data manifest sha256" in card and state["command"] in card
    assert "GPT2LMHeadModel" in card
