"""The typed config: shipped YAMLs validate, bad configs fail with path/value/allowed, overrides, DeepSpeed JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch.cli import main
from pretrain.config import (
    ConfigError,
    config_from_dict,
    flatten,
    load_config,
    to_dict,
)
from pretrain.deepspeed_json import deepspeed_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_configs_exist_for_every_family():
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    for required in ["gpt/debug.yaml", "bert/debug.yaml", "vit/debug.yaml", "gpt/gpt2-124m.yaml",
                     "gpt/gpt2-1.5b.yaml", "gpt/llama-7b.yaml", "bert/bert-large.yaml", "vit/vit-l16.yaml"]:
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_shipped_config_validates(path):
    if "sweep" in (yaml.safe_load(path.read_text()) or {}):  # a scaling sweep: its base config and every trial
        from pretrain.scaling.spec import load_sweep, plan

        assert plan(load_sweep(path))
        return
    cfg = load_config(path)
    world = cfg.parallel.tensor_size * 8
    ds = deepspeed_config(cfg, world)
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 8


# (overrides on the debug GPT, field path in the message, value in the message, words of the rule)
INVALID = [
    (["model.num_heads=3"], "model.num_heads", "3", "must divide model.hidden_size=64"),
    (["model.family=rnn"], "model.family", "'rnn'", "allowed"),
    (["model.hidden_size=-8"], "model.hidden_size", "-8", "greater than or equal to 1"),
    (["model.num_kv_heads=3"], "model.num_kv_heads", "3", "must divide model.num_heads=4"),
    (["model.widht=12"], "model.widht", "12", "unknown key; allowed keys here:"),
    (["parallel.zero_stage=4"], "parallel.zero_stage", "4", "allowed: 0, 1, 2, 3"),
    (["parallel.offload_params=true", "parallel.zero_stage=2"], "parallel.offload_params", "True",
     "needs parallel.zero_stage=3"),
    (["parallel.precision=fp8"], "parallel.precision", "'fp8'", "'fp32', 'bf16' or 'fp16'"),
    (["parallel.precision=bf16", "deepspeed={fp16: {enabled: true}}"], "deepspeed.bf16.enabled", "True",
     "bf16 and fp16 are exclusive"),
    (["parallel.tensor_size=2", "model.vocab_size=511"], "model.vocab_size", "511",
     "divisible by parallel.tensor_size=2"),
    (["parallel.tensor_size=8"], "model.num_heads", "4", "divisible by parallel.tensor_size=8"),
    (["train.global_batch_size=12", "parallel.world_size=2"], "train.global_batch_size", "12",
     "multiple of train.micro_batch_size x data-parallel size = 8 x 2 = 16"),
    (["parallel.world_size=3", "parallel.tensor_size=2", "model.vocab_size=512"], "parallel.world_size", "3",
     "multiple of parallel.tensor_size=2"),
    (["data.seq_len=4096"], "data.seq_len", "4096", "must be <= model.max_seq_len=128"),
    (["optim.lr=fast"], "optim.lr", "'fast'", "valid number"),
    (["optim.betas=[0.9, 1.5]"], "optim.betas.1", "1.5", "in [0, 1)"),
    (["train.steps=0"], "train.steps", "0", "greater than or equal to 1"),
    (["data.source=shards"], "data.path", "None", "shard directory with manifest.json"),
    (["deepspeed.zero_optimization.stage=3"], "deepspeed.zero_optimization.stage", "3",
     "conflicts with parallel.zero_stage=0"),
    (["modle.hidden_size=8"], "modle", "", "unknown key"),
    (["train.global_batch_size=64", "train.batch_rampup=[8,8,100]", "parallel.world_size=2"], "train.batch_rampup",
     "[8, 8, 100]", "multiples of train.micro_batch_size x data-parallel size = 16"),
    (["train.global_batch_size=64", "train.batch_rampup=[16,32,100]", "parallel.world_size=2"],
     "train.batch_rampup", "[16, 32, 100]", "reach it in whole increments"),
    (["train.global_batch_size=64", "train.batch_rampup=[16,16]", "parallel.world_size=2"], "train.batch_rampup",
     "[16, 16]", "three positive integers"),
    (["parallel.activation_checkpointing=sometimes"], "parallel.activation_checkpointing", "'sometimes'",
     "allowed: none, full, attention, or N >= 1 (every N-th block)"),
    (["parallel.activation_checkpointing=0"], "parallel.activation_checkpointing", "0", "N >= 1"),
    (["parallel.precision=bf16", "parallel.grad_accum_dtype=fp32"], "parallel.grad_accum_dtype", "'fp32'",
     "only at ZeRO 1-3; set parallel.zero_stage=1"),
    (["parallel.precision=bf16", "parallel.zero_stage=1", "parallel.grad_accum_dtype=fp16"],
     "parallel.grad_accum_dtype", "'fp16'", "allowed: auto, fp32, or the training precision (bf16)"),
    (["parallel.precision=bf16", "deepspeed.data_types.grad_accum_dtype=fp32"], "deepspeed.data_types.grad_accum_dtype",
     "'fp32'", "only at ZeRO 1-3"),
]


@pytest.mark.parametrize("overrides,path,value,rule", INVALID, ids=[x[1] + ":" + x[0][0] for x in INVALID])
def test_invalid_config_exits_2_naming_field_value_rule(overrides, path, value, rule, capsys):
    code = main(["config", "show", str(REPO / "configs/gpt/debug.yaml"), *overrides])
    err = capsys.readouterr().err
    assert code == 2
    line = next((ln for ln in err.splitlines() if ln.strip().startswith(path + ":")), None)
    assert line is not None, err
    assert f"got {value}" in line, line
    assert rule in line, line


def test_cli_process_exit_code_and_message():
    """The installed console script, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "launch.cli", "config", "show", "configs/gpt/debug.yaml",
                           "parallel.zero_stage=7"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "parallel.zero_stage: got 7; allowed: 0, 1, 2, 3" in proc.stderr


def test_bad_yaml_file_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    assert main(["config", "show", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["config", "show", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_overrides_coerce_types_nest_and_take_lists():
    cfg = load_config(REPO / "configs/gpt/debug.yaml", [
        "optim.lr=1e-3", "train.steps=7", "model.dropout=0.25", "parallel.activation_checkpointing=true",
        "optim.betas=[0.8, 0.9]", "model.num_kv_heads=null", "tracking.tags={team: nlp}", "train.seed='42'",
    ])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.train.steps == 7 and cfg.model.dropout == 0.25
    assert cfg.parallel.activation_checkpointing == "full"  # true is read as full
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.num_kv_heads is None
    assert cfg.tracking.tags == {"team": "nlp"}
    assert cfg.train.seed == 42  # the string '42' is coerced to the field's int


def test_override_unknown_key_refused_with_allowed_list():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.stepz=3"])
    (path, value, msg), = e.value.problems
    assert path == "train.stepz" and value == 3
    assert "steps" in msg and "micro_batch_size" in msg


def test_override_into_a_value_refused():
    with pytest.raises(ConfigError, match="train.steps: got 5; is a value, not a section"):
        load_config(None, ["train.steps=5", "train.steps.x=1"])


def test_override_without_equals_refused():
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["train.steps"])


def test_include_merges_and_file_wins():
    cfg = load_config(REPO / "configs/gpt/debug-llama.yaml")
    assert cfg.model.hidden_size == 64  # from debug.yaml
    assert cfg.model.position == "rope" and cfg.model.num_kv_heads == 2  # its own


def test_include_cycle_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("include: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("include: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("world,tp,micro,glob", [
    (1, 1, 4, None), (2, 1, 4, 32), (4, 2, 2, 16), (8, 2, 4, 64), (8, 4, 1, 8), (16, 8, 3, 12), (6, 3, 5, 40),
])
def test_deepspeed_json_obeys_batch_identity(world, tp, micro, glob):
    cfg = config_from_dict({
        "model": {"num_heads": 24, "hidden_size": 96, "vocab_size": 512, "pad_vocab_multiple": 8 * tp},
        "parallel": {"tensor_size": tp, "zero_stage": 2},
        "train": {"micro_batch_size": micro, "global_batch_size": glob},
    })
    ds = deepspeed_config(cfg, world)
    dp = world // tp
    assert ds["train_micro_batch_size_per_gpu"] == micro
    assert ds["train_batch_size"] == micro * ds["gradient_accumulation_steps"] * dp
    assert ds["train_batch_size"] == (glob if glob else micro * dp)
    assert ds["zero_optimization"]["stage"] == 2


def test_deepspeed_json_precision_offload_and_passthrough():
    cfg = config_from_dict({
        "parallel": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True, "precision": "bf16"},
        "deepspeed": {"zero_optimization": {"stage3_max_live_parameters": 1000}, "wall_clock_breakdown": True},
    })
    ds = deepspeed_config(cfg, 2)
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["zero_optimization"]["stage3_max_live_parameters"] == 1000  # merged, not replacing
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["wall_clock_breakdown"] is True


def test_world_size_that_does_not_split_the_batch_refused():
    cfg = config_from_dict({"train": {"micro_batch_size": 4, "global_batch_size": 24}})
    assert deepspeed_config(cfg, 3)["gradient_accumulation_steps"] == 2
    with pytest.raises(ConfigError, match="train.global_batch_size: got 24"):
        deepspeed_config(cfg, 4)


def test_config_show_prints_yaml_that_round_trips(capsys):
    assert main(["config", "show", str(REPO / "configs/bert/debug.yaml"), "train.steps=3", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    text, _, ds_text = out.partition("# DeepSpeed JSON (world size 2)\n")
    again = config_from_dict(yaml.safe_load(text))
    assert again.train.steps == 3 and again.model.family == "bert"
    assert json.loads(ds_text)["train_batch_size"] == 16
    assert to_dict(again) == to_dict(load_config(REPO / "configs/bert/debug.yaml", ["train.steps=3"]))


def test_flatten_for_mlflow_params():
    flat = flatten(to_dict(load_config(None)))
    assert flat["model.hidden_size"] == 64 and flat["parallel.zero_stage"] == 0
    assert all(not isinstance(v, dict) or not v for v in flat.values())


def test_batch_rampup_follows_megatron():
    """start 16, +16, over 96 samples, up to 64: three increments, one per 32 samples."""
    from pretrain.config import global_batch_at

    cfg = config_from_dict({"train": {"micro_batch_size": 8, "global_batch_size": 64, "batch_rampup": [16, 16, 96]}})
    seen = {0: 16, 31: 16, 32: 32, 63: 32, 64: 48, 95: 48, 96: 64, 10**6: 64}
    assert {n: global_batch_at(cfg, 2, n) for n in seen} == seen
    no_ramp = config_from_dict({"train": {"micro_batch_size": 8, "global_batch_size": 64}})
    assert global_batch_at(no_ramp, 2, 0) == 64


def _bf16(stage: int, glob: int | None, **parallel) -> dict:
    return {"parallel": {"zero_stage": stage, "precision": "bf16", **parallel},
            "train": {"micro_batch_size": 4, "global_batch_size": glob}}


@pytest.mark.parametrize("stage,glob,expected", [
    (1, 16, "fp32"), (2, 16, "fp32"), (3, 16, "fp32"),  # 2 micro-batches per step on 2 ranks
    (1, 8, None), (3, None, None),  # one micro-batch: nothing to accumulate
    (0, 16, None),  # ZeRO 0: DeepSpeed has no fp32 accumulation; auto keeps bf16 (fp32 is refused)
])
def test_bf16_accumulates_in_fp32_where_deepspeed_can(stage, glob, expected):
    from pretrain.deepspeed_json import resolved_grad_accum_dtype

    cfg = config_from_dict(_bf16(stage, glob))
    ds = deepspeed_config(cfg, 2)
    assert ds.get("data_types", {}).get("grad_accum_dtype") == expected
    assert resolved_grad_accum_dtype(cfg, 2) == (expected or "bf16")
    explicit = config_from_dict(_bf16(max(stage, 1), 8, grad_accum_dtype="fp32"))  # asked for: set even at accum 1
    assert deepspeed_config(explicit, 2)["data_types"] == {"grad_accum_dtype": "fp32"}


def test_rampup_counts_as_accumulation():
    cfg = config_from_dict({**_bf16(1, 32), "train": {"micro_batch_size": 4, "global_batch_size": 32,
                                                      "batch_rampup": [8, 8, 64]}})
    assert deepspeed_config(cfg, 2)["data_types"] == {"grad_accum_dtype": "fp32"}


def test_zero_overlaps_communication_with_tuned_buckets_and_stays_overridable():
    """overlap_comm on at every ZeRO stage, buckets of max(40M, 1M x data ranks) elements instead of
    one 5e8 bucket per model, small ZeRO-3 parameters kept gathered, pinned offload buffers; the
    deepspeed: section still wins."""
    for stage in (1, 2, 3):
        zero = deepspeed_config(config_from_dict({"parallel": {"zero_stage": stage}}), 8)["zero_optimization"]
        assert zero["overlap_comm"] is True and zero["contiguous_gradients"] is True
        assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 40_000_000
    big = deepspeed_config(config_from_dict({"parallel": {"zero_stage": 2}}), 64)["zero_optimization"]
    assert big["reduce_bucket_size"] == 64_000_000
    z3 = config_from_dict({"model": {"hidden_size": 128}, "parallel": {"zero_stage": 3, "offload_optimizer": True,
                                                                       "offload_params": True}})
    zero = deepspeed_config(z3, 2)["zero_optimization"]
    assert zero["stage3_param_persistence_threshold"] == 1280
    assert zero["offload_optimizer"]["pin_memory"] and zero["offload_param"]["pin_memory"]
    assert "overlap_comm" not in deepspeed_config(config_from_dict({}), 2)["zero_optimization"]  # ZeRO 0
    mine = config_from_dict({"parallel": {"zero_stage": 2},
                             "deepspeed": {"zero_optimization": {"overlap_comm": False, "reduce_bucket_size": 1000}}})
    zero = deepspeed_config(mine, 2)["zero_optimization"]
    assert zero["overlap_comm"] is False and zero["reduce_bucket_size"] == 1000


@pytest.mark.parametrize("value,expected", [(True, "full"), (False, "none"), (1, "full"), (3, 3), ("attention", "attention"),
                                            ("none", "none")])
def test_activation_checkpointing_words(value, expected):
    cfg = config_from_dict({"parallel": {"activation_checkpointing": value}})
    assert cfg.parallel.activation_checkpointing == expected
