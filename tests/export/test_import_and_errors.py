"""``import-hf`` round trips, the safetensors format, sharding, dtypes, and refusal of broken
checkpoints with the file named and nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from launch import export_cli, import_cli
from pretrain.checkpoint import from_checkpoint, load_full_state_dict, load_init_weights
from pretrain.export import export_checkpoint
from pretrain.models.hf import load_safetensors_dir
from tests.export.conftest import MODELS, REPO, run_name
from tests.export.helpers import hf_logits, inputs, our_logits


@pytest.fixture(scope="module")
def hf_dirs(checkpoints, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hf")
    return {m: export_checkpoint(checkpoints[run_name(m, 3, 2)], root / m) for m in MODELS}


@pytest.mark.parametrize("model", list(MODELS))
def test_import_then_export_is_identical(hf_dirs, checkpoints, tmp_path, model):
    hf = hf_dirs[model]
    assert import_cli.main([str(hf), "--out", str(tmp_path / "imp")]) == 0
    assert export_cli.main([str(tmp_path / "imp"), "--out", str(tmp_path / "again")]) == 0
    before, after = load_safetensors_dir(hf), load_safetensors_dir(tmp_path / "again")
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert (hf / "config.json").read_text() == (tmp_path / "again" / "config.json").read_text()
    for name in ("tokenizer.json", "preprocessor_config.json", "generation_config.json"):
        assert (hf / name).is_file() == (tmp_path / "again" / name).is_file()
        if (hf / name).is_file():
            assert (hf / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    # the imported directory is what init_from loads: the trained weights, fitted to the config
    cfg, trained = load_full_state_dict(checkpoints[run_name(model, 3, 2)])
    init = load_init_weights(tmp_path / "imp", cfg.model)
    assert init.keys() == trained.keys()
    for k in trained:
        assert torch.equal(init[k], trained[k]), k
    x = inputs(cfg.model)
    imported, original = from_checkpoint(tmp_path / "imp"), from_checkpoint(checkpoints[run_name(model, 3, 2)])
    assert torch.equal(our_logits(imported, x), our_logits(original, x))


def test_imported_weights_shard_for_tensor_parallel(hf_dirs, tmp_path):
    """init_from at tensor 2: the trainer slices the full state dict with shard_state_dict."""
    from pretrain.config import load_config
    from pretrain.parallel import merge_tp_state_dicts, shard_state_dict

    import_cli.main([str(hf_dirs["llama"]), "--out", str(tmp_path / "imp")])
    cfg = load_config(REPO / MODELS["llama"], ["parallel.tensor_size=2"])
    full = load_init_weights(tmp_path / "imp", cfg.model)
    shards = [shard_state_dict(full, cfg.model, r, 2) for r in range(2)]
    assert shards[0]["layers.0.attn.qkv.weight"].shape[0] * 2 == full["layers.0.attn.qkv.weight"].shape[0]
    merged = merge_tp_state_dicts(shards, cfg.model)
    assert all(torch.equal(merged[k], full[k]) for k in full)
    from pretrain.models import build_model

    result = build_model(cfg.model).load_state_dict(shard_state_dict(full, cfg.model, 0, 1), strict=False)
    assert not result.missing_keys and not result.unexpected_keys  # what train_setup checks


def test_import_refuses_other_architectures(hf_dirs, tmp_path):
    import_cli.main([str(hf_dirs["gpt"]), "--out", str(tmp_path / "imp")])
    from pretrain.checkpoint import CheckpointError
    from pretrain.config import load_config

    llama = load_config(REPO / MODELS["llama"])
    with pytest.raises(CheckpointError, match="model.position: checkpoint 'learned', config 'rope'"):
        load_init_weights(tmp_path / "imp", llama.model)


def test_safetensors_format_sharded_and_bf16(checkpoints, tmp_path):
    run = checkpoints[run_name("bert", 3, 2)]
    cfg, full = load_full_state_dict(run)
    out = export_checkpoint(run, tmp_path / "sd", fmt="safetensors", max_shard_size="40KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all(f"-of-{len(shards):05d}.safetensors" in s for s in shards)
    stored = load_safetensors_dir(out)
    assert stored.keys() == full.keys() - {"mlm.decoder.weight"}  # tied to tok_embed, written once
    assert all(torch.equal(stored[k], full[k]) for k in stored)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in stored.values())

    hf = export_checkpoint(run, tmp_path / "hf16", dtype="bf16", max_shard_size="50KB")
    assert (hf / "model.safetensors.index.json").is_file()
    assert {t.dtype for t in load_safetensors_dir(hf).values()} == {torch.bfloat16}
    assert json.loads((hf / "config.json").read_text())["dtype"] == "bfloat16"
    model = from_checkpoint(run)
    x = inputs(cfg.model)
    assert float((our_logits(model, x) - hf_logits(hf, cfg.model, x)).abs().max()) < 0.1  # bf16 rounding only


def test_streaming_writer_matches_safetensors(tmp_path):
    from pretrain.export.writer import ShardedSafetensorsWriter

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 5, generator=g), "b.c": torch.randn(7, generator=g).to(torch.bfloat16),
               "d": torch.arange(6, dtype=torch.int64).reshape(2, 3), "e": torch.randn(4, 4, generator=g).half(),
               "empty": torch.zeros(0, 3)}
    w = ShardedSafetensorsWriter(tmp_path, max_shard_bytes=1 << 30)
    for k, v in tensors.items():
        w.add(k, v)
    assert w.close() == ["model.safetensors"]
    back = load_file(str(tmp_path / "model.safetensors"))
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())
    assert not list(tmp_path.glob(".*"))  # spill files removed


# ----------------------------------------------------------------------------------------------
# broken checkpoints: exit 2, the file named, nothing written
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def broken(checkpoints, tmp_path):
    src = checkpoints[run_name("gpt", 3, 2)] / "checkpoints" / "step00000002"
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _export_fails(ckpt, tmp_path, capsys, expect: str):
    out = tmp_path / "out" / "model"
    assert export_cli.main([str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expect in err, err
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_deleted_shard_is_refused(broken, tmp_path, capsys):
    (broken / "zero_pp_rank_0_mp_rank_01_optim_states.pt").unlink()
    _export_fails(broken, tmp_path, capsys, "zero_pp_rank_0_mp_rank_01_optim_states.pt: missing")


def test_truncated_file_is_refused(broken, tmp_path, capsys):
    p = broken / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    p.write_bytes(p.read_bytes()[:1000])
    _export_fails(broken, tmp_path, capsys, "zero_pp_rank_0_mp_rank_00_optim_states.pt: 1000 bytes")


def test_checksum_mismatch_is_refused(broken, tmp_path, capsys):
    p = broken / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    # "<file>: sha256 <have>... but complete.json records <want>... (corrupt or changed)"
    _export_fails(broken, tmp_path, capsys, "zero_pp_rank_0_mp_rank_00_model_states.pt: sha256 ")


def test_unlisted_missing_shard_is_refused(broken, tmp_path, capsys):
    """Even with complete.json not listing it (a hand-made dir), a missing shard is named."""
    (broken / "zero_pp_rank_0_mp_rank_01_model_states.pt").unlink()
    info = json.loads((broken / "complete.json").read_text())
    info["files"] = [f for f in info["files"] if f["path"] != "zero_pp_rank_0_mp_rank_01_model_states.pt"]
    (broken / "complete.json").write_text(json.dumps(info))
    _export_fails(broken, tmp_path, capsys, "zero_pp_rank_0_mp_rank_01_model_states.pt: missing")


def test_not_a_checkpoint_via_the_real_cli(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "export", str(tmp_path), "--out", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path / 'complete.json'}: missing" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_existing_output_is_kept_on_failure(broken, tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (broken / "config.yaml").unlink()
    assert export_cli.main([str(broken), "--out", str(out), "--overwrite"]) == 2
    assert "config.yaml: missing" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (out / "keep.txt").read_text() == "mine"


def test_import_hf_refuses_bad_input(tmp_path, capsys):
    assert import_cli.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path}: no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 8}))
    assert import_cli.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "model_type='t5' is not supported" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]
