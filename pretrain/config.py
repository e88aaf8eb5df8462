"""The typed experiment config: one schema, loaded from YAML, overridden with ``key.path=value``.

Every section refuses unknown keys. Cross-field rules live in validators so that a bad config
fails in ``load_config`` -- before any process is spawned -- with the field path, the bad value
and what is allowed (``ConfigError``). ``pretrain.deepspeed_json`` turns a resolved config plus a
world size into the JSON DeepSpeed takes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot run. ``str()`` is one line per problem: ``path: message``."""

    def __init__(self, problems: list[tuple[str, Any, str]]):
        self.problems = problems
        lines = [f"{path}: got {value!r}; {msg}" for path, value, msg in problems]
        super().__init__("invalid config:\n  " + "\n  ".join(lines))


class _FieldError(ValueError):
    """Raised inside validators. pydantic keeps only ``str(exc)``, so the path, value and rule
    travel encoded in it; ``config_from_dict`` decodes them into a ``ConfigError``."""

    def __init__(self, path: str, value: Any, allowed: str):
        self.problem = (path, value, allowed)
        super().__init__(f"@@{path}@@{value!r}@@{allowed}")


def _fail(path: str, value: Any, allowed: str):
    raise _FieldError(path, value, allowed)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------
class ModelConfig(Section):
    """Architecture. One flat section for all families; family-specific fields are ignored elsewhere."""

    family: Literal["gpt", "bert", "vit"] = "gpt"
    vocab_size: int = Field(512, ge=1)  # text families; padded to a multiple of pad_vocab_multiple
    pad_vocab_multiple: int = Field(1, ge=1)  # Megatron's make-vocab-size-divisible-by
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = Field(None, ge=1)  # grouped-query attention; None = num_heads
    ffn_hidden_size: int | None = Field(None, ge=1)  # None = 4 x hidden (GELU) or Llama's 8/3 rule
    max_seq_len: int = Field(128, ge=1)
    position: Literal["learned", "rope", "none"] = "learned"
    rope_theta: float = Field(10000.0, gt=0)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = Field(1e-5, gt=0)
    norm_position: Literal["pre", "post"] = "pre"
    activation: Literal["gelu", "gelu_tanh", "swiglu"] = "gelu"
    bias: bool = True
    dropout: float = Field(0.0, ge=0, lt=1)
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    tie_embeddings: bool = True
    init_std: float = Field(0.02, gt=0)
    scaled_residual_init: bool = True  # GPT-2: residual projections scaled by 1/sqrt(2 * layers)
    # BERT
    type_vocab_size: int = Field(2, ge=0)
    # ViT
    image_size: int = Field(224, ge=1)
    patch_size: int = Field(16, ge=1)
    num_channels: int = Field(3, ge=1)
    num_classes: int = Field(1000, ge=1)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return ((self.vocab_size + m - 1) // m) * m

    @property
    def ffn_size(self) -> int:
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        if self.activation == "swiglu":  # Llama: 2/3 of 4h, rounded up to a multiple of 256
            return ((int(8 * self.hidden_size / 3) + 255) // 256) * 256
        return 4 * self.hidden_size

    @model_validator(mode="after")
    def _check(self):
        if self.hidden_size % self.num_heads:
            _fail("model.num_heads", self.num_heads, f"must divide model.hidden_size={self.hidden_size}")
        if self.num_heads % self.kv_heads:
            _fail("model.num_kv_heads", self.num_kv_heads, f"must divide model.num_heads={self.num_heads}")
        if self.position == "rope" and self.head_dim % 2:
            _fail("model.hidden_size", self.hidden_size, "rope needs an even head dimension")
        if self.family == "vit":
            if self.image_size % self.patch_size:
                _fail("model.patch_size", self.patch_size, f"must divide model.image_size={self.image_size}")
        if self.family == "bert" and self.norm_position != "post" and self.position == "rope":
            pass  # allowed: modern BERT variants
        return self


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
class DataConfig(Section):
    """Where batches come from. ``path`` is a shard directory holding ``manifest.json``."""

    source: Literal["shards", "synthetic"] = "synthetic"
    path: str | None = None
    seq_len: int = Field(128, ge=2)  # text window; must fit model.max_seq_len
    num_workers: int = Field(0, ge=0)
    shuffle_buffer: int = Field(1000, ge=0)
    mlm_probability: float = Field(0.15, gt=0, lt=1)  # BERT
    image_size: int | None = Field(None, ge=1)  # ViT train/eval crop; None = model.image_size
    crop_scale_min: float = Field(0.08, gt=0, le=1)  # RandomResizedCrop lower bound
    hflip: bool = True
    synthetic_samples: int = Field(4096, ge=1)
    # shards against manifest.json: sizes at start; "open" adds each shard's sha256 on first open,
    # "full" every sha256 at start (pretrain/data/shard_store.py)
    verify: Literal["size", "open", "full"] = "open"
    cache_dir: str | None = None  # local copies of remote shards (s3://, gs://, https:// data.path)
    cache_gb: float = Field(20.0, gt=0)  # bound of that cache; least recently used copies go first

    @model_validator(mode="after")
    def _check(self):
        if self.source == "shards" and not self.path:
            _fail("data.path", self.path, "a shard directory with manifest.json is required when data.source=shards")
        return self


# ----------------------------------------------------------------------------------------------
# optimisation
# ----------------------------------------------------------------------------------------------
class OptimConfig(Section):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    decay_norms: bool = False
    decay_biases: bool = False
    decay_embeddings: bool = False
    # the AdamW kernel: one fused kernel per device and dtype (fastest on CPU and GPU; with optimizer
    # offload it is the host-side step, ~6x torch's default loop, on par with DeepSpeedCPUAdam without
    # its JIT build: bench/cpu_optimizer.py), torch's multi-tensor foreach, or the per-tensor loop
    implementation: Literal["fused", "foreach", "for-loop"] = "fused"

    @model_validator(mode="after")
    def _check(self):
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                _fail(f"optim.betas.{i}", b, "each beta must be in [0, 1)")
        return self


class ScheduleConfig(Section):
    kind: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    decay_fraction: float = Field(0.2, gt=0, le=1)  # WSD: final fraction of steps spent decaying


class TrainConfig(Section):
    steps: int = Field(100, ge=1)
    micro_batch_size: int = Field(4, ge=1)
    global_batch_size: int | None = Field(None, ge=1)  # None = micro x data-parallel (no accumulation)
    # Megatron's --rampup-batch-size [start, increment, samples]: the global batch starts at `start`
    # and grows by `increment`, evenly over the first `samples` samples, up to global_batch_size
    batch_rampup: list[int] | None = None
    seed: int = 1234
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0)  # 0 = no periodic evaluation
    eval_steps: int = Field(10, ge=1)
    run_dir: str = "runs/default"
    max_nonfinite_in_row: int = Field(5, ge=1)
    # a rank that makes no progress (step, eval batch, checkpoint file) for this long ends the job,
    # named, instead of the others waiting out the process group's 30-minute timeout; 0 = off
    hang_timeout_s: float = Field(600.0, ge=0)
    compile: bool = False  # torch.compile each transformer block (inductor); the loss and optimizer stay eager
    # deterministic kernels (torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG): bit-exact
    # reruns and resume checks on GPUs, at some speed; docs/OPERATIONS.md says what stays inexact
    deterministic: bool = False


class ParallelConfig(Section):
    tensor_size: int = Field(1, ge=1)
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # recompute in backward instead of storing: "none", "full" (every block), "attention" (the
    # attention half of every block), or N (every N-th block: 0, N, 2N, ...); true/false = full/none.
    # `pretrain config show --memory` estimates what each choice needs per rank.
    activation_checkpointing: Literal["none", "full", "attention"] | int = "none"
    # gradient accumulation dtype: "auto" = fp32 when precision is bf16 and a step accumulates more
    # than one micro-batch at ZeRO 1-3 (DeepSpeed cannot at ZeRO 0), else the parameters' dtype
    grad_accum_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    world_size: int | None = Field(None, ge=1)  # expected ranks; None = taken from the launcher

    @field_validator("activation_checkpointing", mode="before")
    @classmethod
    def _checkpointing_words(cls, v):
        if isinstance(v, bool):
            return "full" if v else "none"
        if isinstance(v, str) and v.isdigit():
            v = int(v)
        if v == 1:
            return "full"
        if not (v in ("none", "full", "attention") or (isinstance(v, int) and v >= 2)):
            _fail("parallel.activation_checkpointing", v,
                  "allowed: none, full, attention, or N >= 1 (every N-th block); true/false mean full/none")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.zero_stage not in (0, 1, 2, 3):
            _fail("parallel.zero_stage", self.zero_stage, "allowed: 0, 1, 2, 3")
        if self.grad_accum_dtype in ("bf16", "fp16") and self.grad_accum_dtype != self.precision:
            _fail("parallel.grad_accum_dtype", self.grad_accum_dtype,
                  f"allowed: auto, fp32, or the training precision ({self.precision})")
        if self.grad_accum_dtype == "fp32" and self.zero_stage == 0 and self.precision != "fp32":
            _fail("parallel.grad_accum_dtype", "fp32", f"DeepSpeed accumulates {self.precision} gradients in fp32 "
                  "only at ZeRO 1-3; set parallel.zero_stage=1 (the same memory on one data-parallel rank)")
        if self.offload_params and self.zero_stage != 3:
            _fail("parallel.offload_params", True, f"parameter offload needs parallel.zero_stage=3 (have {self.zero_stage})")
        if self.offload_optimizer and self.zero_stage == 0:
            _fail("parallel.offload_optimizer", True, "optimizer offload needs parallel.zero_stage >= 1")
        if self.world_size is not None and self.world_size % self.tensor_size:
            _fail("parallel.world_size", self.world_size, f"must be a multiple of parallel.tensor_size={self.tensor_size}")
        return self


class CheckpointConfig(Section):
    every: int = Field(0, ge=0)  # 0 = only at the end (and on SIGTERM/SIGUSR1)
    keep_last: int = Field(2, ge=1)
    resume: str | None = None  # None, "auto" (latest under run_dir) or a checkpoint directory
    init_from: str | None = None  # weights only (import-hf output or another checkpoint)
    # with resume: start a new run from that checkpoint's state (weights, optimizer, step, data
    # position) -- its own MLflow run, e.g. a WSD cooldown branch -- instead of continuing its run
    fork: bool = False

    @model_validator(mode="after")
    def _check(self):
        if self.fork and self.resume in (None, "auto"):
            _fail("checkpoint.fork", True, "needs checkpoint.resume=<a checkpoint directory> to branch from")
        return self


class TrackingConfig(Section):
    enabled: bool = True
    uri: str | None = None  # None = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    experiment: str = "pretrain"
    run_name: str | None = None
    system_metrics: bool = True  # MLflow's CPU, memory, disk, network (and GPU with pynvml) samples, rank 0
    tags: dict[str, str] = Field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# root
# ----------------------------------------------------------------------------------------------
class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    deepspeed: dict[str, Any] = Field(default_factory=dict)  # raw keys, merged last

    @model_validator(mode="after")
    def _check(self):
        m, p, d = self.model, self.parallel, self.data
        if m.family != "vit":
            if m.padded_vocab_size % p.tensor_size:
                _fail("model.vocab_size", m.vocab_size,
                      f"padded vocabulary must be divisible by parallel.tensor_size={p.tensor_size} "
                      f"(set model.pad_vocab_multiple, e.g. {128 * p.tensor_size})")
            if d.seq_len > m.max_seq_len:
                _fail("data.seq_len", d.seq_len, f"must be <= model.max_seq_len={m.max_seq_len}")
        if m.num_heads % p.tensor_size:
            _fail("model.num_heads", m.num_heads, f"must be divisible by parallel.tensor_size={p.tensor_size}")
        if m.kv_heads % p.tensor_size:
            _fail("model.num_kv_heads", m.kv_heads, f"must be divisible by parallel.tensor_size={p.tensor_size}")
        if m.ffn_size % p.tensor_size:
            _fail("model.ffn_hidden_size", m.ffn_size, f"must be divisible by parallel.tensor_size={p.tensor_size}")
        if p.world_size is not None:
            _dp_size(self, p.world_size)  # raises on a batch that does not split
        _check_deepspeed_passthrough(self)
        return self


def _check_deepspeed_passthrough(cfg: Config) -> None:
    raw = cfg.deepspeed
    for key in ("fp16", "bf16"):
        if key in raw and not isinstance(raw[key], dict):
            _fail(f"deepspeed.{key}", raw[key], "must be a mapping such as {enabled: true}")
    fp16 = raw.get("fp16", {}).get("enabled", cfg.parallel.precision == "fp16")
    bf16 = raw.get("bf16", {}).get("enabled", cfg.parallel.precision == "bf16")
    if fp16 and bf16:
        _fail("deepspeed.bf16.enabled", True, "bf16 and fp16 are exclusive; choose one with parallel.precision")
    types = raw.get("data_types", {})
    if (isinstance(types, dict) and types.get("grad_accum_dtype") in ("fp32", "float32") and (fp16 or bf16)
            and cfg.parallel.zero_stage == 0):
        _fail("deepspeed.data_types.grad_accum_dtype", types["grad_accum_dtype"],
              "DeepSpeed accumulates 16-bit gradients in fp32 only at ZeRO 1-3; set parallel.zero_stage=1")
    zero = raw.get("zero_optimization", {})
    if isinstance(zero, dict) and "stage" in zero and zero["stage"] != cfg.parallel.zero_stage:
        _fail("deepspeed.zero_optimization.stage", zero["stage"],
              f"conflicts with parallel.zero_stage={cfg.parallel.zero_stage}; set parallel.zero_stage instead")


# ----------------------------------------------------------------------------------------------
# batch arithmetic
# ----------------------------------------------------------------------------------------------
def dp_size(cfg: Config, world_size: int) -> int:
    """Data-parallel size for ``world_size`` ranks, checking the batch identity splits evenly."""
    try:
        return _dp_size(cfg, world_size)
    except _FieldError as e:
        raise ConfigError([e.problem]) from None


def grad_accum_steps(cfg: Config, dp: int) -> int:
    """global batch = micro batch x gradient accumulation x data-parallel size."""
    try:
        return _grad_accum_steps(cfg, dp)
    except _FieldError as e:
        raise ConfigError([e.problem]) from None


def _dp_size(cfg: Config, world_size: int) -> int:
    tp = cfg.parallel.tensor_size
    if world_size % tp:
        _fail("parallel.tensor_size", tp, f"must divide the world size {world_size}")
    dp = world_size // tp
    _grad_accum_steps(cfg, dp)
    _check_rampup(cfg, dp)
    return dp


def _check_rampup(cfg: Config, dp: int) -> None:
    r = cfg.train.batch_rampup
    if r is None:
        return
    unit = cfg.train.micro_batch_size * dp
    final = unit * _grad_accum_steps(cfg, dp)
    if len(r) != 3 or min(r) < 1:
        _fail("train.batch_rampup", r, "must be [start, increment, samples], three positive integers")
    start, inc, _ = r
    if start >= final or (final - start) % inc:
        _fail("train.batch_rampup", r, f"start must be below train.global_batch_size ({final}) and reach it "
                                       "in whole increments")
    if start % unit or inc % unit:
        _fail("train.batch_rampup", r, f"start and increment must be multiples of train.micro_batch_size x "
                                       f"data-parallel size = {unit}")


def layout(cfg: Config, world: int) -> dict:
    """The parallel layout of a job of ``world`` ranks: MLflow tags, ``trainer_state.json`` keys,
    and what DeepSpeed's own checkpoint loader needs unchanged (``pretrain.checkpoint.resume``)."""
    p = cfg.parallel
    return {"world_size": world, "data_parallel_size": world // p.tensor_size, "tensor_parallel_size": p.tensor_size,
            "zero_stage": p.zero_stage, "precision": p.precision}


def global_batch_at(cfg: Config, dp: int, samples_seen: int) -> int:
    """The global batch of the next step after ``samples_seen`` samples (``train.batch_rampup``,
    as Megatron: ``start + floor(samples_seen / (samples / increments)) x increment``, capped)."""
    final = global_batch(cfg, dp)
    if cfg.train.batch_rampup is None:
        return final
    start, inc, ramp = cfg.train.batch_rampup
    per_increment = ramp / ((final - start) // inc)
    return min(final, start + int(samples_seen // per_increment) * inc)


def _grad_accum_steps(cfg: Config, dp: int) -> int:
    micro, glob = cfg.train.micro_batch_size, cfg.train.global_batch_size
    if glob is None:
        return 1
    if glob % (micro * dp):
        _fail("train.global_batch_size", glob,
              f"must be a multiple of train.micro_batch_size x data-parallel size = {micro} x {dp} = {micro * dp}")
    return glob // (micro * dp)


def global_batch(cfg: Config, dp: int) -> int:
    return cfg.train.micro_batch_size * grad_accum_steps(cfg, dp) * dp


# ----------------------------------------------------------------------------------------------
# loading, overrides, printing
# ----------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value); values are YAML, so 3, 1e-4, [1, 2], null, true work."""
    if "=" not in text:
        raise ConfigError([(text, text, "an override must look like key.path=value")])
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError([(text, text, "an override needs a key before '='")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError([(key, raw, f"not a YAML value ({e.problem})")]) from None
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError([(".".join(path[: i + 1]), nxt, "is a value, not a section; cannot set a key inside it")])
            node = nxt
        node[path[-1]] = value
    return out


def _problems(err: ValidationError) -> list[tuple[str, Any, str]]:
    problems = []
    for e in err.errors():
        msg = str(e.get("msg", ""))
        if "@@" in msg:  # raised by _fail: carries its own path
            _, path, value, allowed = msg.split("@@", 3)
            problems.append((path, _Raw(value), allowed))
            continue
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            section = e["loc"][:-1]
            known = _known_fields(section)
            msg = f"unknown key; allowed keys here: {', '.join(known)}"
        elif e["type"] == "literal_error":
            msg = f"allowed: {e.get('ctx', {}).get('expected', msg)}"
        else:
            msg = f"{msg} (expected {e['type'].split('_')[0]})" if e["type"].endswith("_parsing") else msg
        problems.append((loc, e.get("input"), msg))
    return problems


class _Raw(str):
    """A value already rendered with repr, shown as is."""

    def __repr__(self) -> str:
        return str(self)


def _known_fields(loc: tuple) -> list[str]:
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def config_from_dict(data: dict | None, overrides: list[str] = ()) -> Config:
    data = apply_overrides(data or {}, list(overrides))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems(e)) from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config as a dict, with its ``include: [files]`` merged underneath it (paths relative
    to the including file; later includes and the file itself win)."""
    if not path.is_file():
        raise ConfigError([("CONFIG", str(path), "no such file")])
    if path.resolve() in seen:
        raise ConfigError([("include", str(path), "includes itself (cycle)")])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([("CONFIG", str(path), f"not valid YAML: {e}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([("CONFIG", str(path), "the top level must be a mapping of sections")])
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise ConfigError([("include", includes, "a list of YAML files relative to this one")])
    merged: dict = {}
    for inc in includes:
        merged = deep_merge(merged, _read_yaml(path.parent / str(inc), seen + (path.resolve(),)))
    return deep_merge(merged, data)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read YAML (or nothing, for the built-in default), apply overrides, validate."""
    data = _read_yaml(Path(path)) if path is not None else {}
    return config_from_dict(data, overrides)


def to_dict(cfg: Config) -> dict:
    return cfg.model_dump(mode="json")


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; used for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------
# merging (includes here; the deepspeed pass-through section in pretrain.deepspeed_json)
# ----------------------------------------------------------------------------------------------
def deep_merge(base: dict, extra: dict) -> dict:
    """``extra`` over ``base``: nested mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out
