"""A sweep config and the trials it makes.

A sweep config is a training config (``include:``, sections, ``key.path=value`` overrides: the base
every trial shares) plus a ``sweep:`` section::

    sweep:
      name: debug                  # MLflow parent run name
      out: runs/scaling/debug      # one run dir per trial below it
      nproc: 1                     # ranks per trial (`pretrain train --nproc`)
      mode: tokens                 # tokens: ladder x token budgets; isoflop: ladder x compute budgets;
                                   # wsd: per size one constant-LR run + cooldown forks at the budgets
      ladder:                      # model sizes: model.* keys per rung (or ladder_rule)
        - {hidden_size: 32, num_layers: 2, num_heads: 2}
      tokens: [5120, 10240]        # D budgets (tokens and wsd modes)
      flops: [1.0e11, 3.0e11]      # C budgets (isoflop mode)

Tokens become steps: ``steps = round(D / (global batch x seq_len))`` and the trial's D is what those
steps read. Compute is ``6 N D`` (``flops_per_token: 6N``) or the exact count of
``pretrain.models.flops`` (``exact``); N is the non-embedding or total parameter count (``n_params``).
Every trial config is built and validated here, so a ladder that breaks a divisibility rule fails
before any trial (or the parent run) starts, naming the rung.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pretrain.config import (
    Config,
    ConfigError,
    _read_yaml,
    apply_overrides,
    config_from_dict,
    dp_size,
    global_batch,
    to_dict,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LadderRule(_Section):
    """Sizes from a width/depth rule: ``hidden = aspect_ratio x layers`` rounded to ``head_dim``."""

    num_layers: list[int] = Field(min_length=1)
    aspect_ratio: int = Field(64, ge=1)
    head_dim: int = Field(64, ge=1)


class SlurmOptions(_Section):
    partition: str | None = None
    time: str = "24:00:00"
    account: str | None = None
    max_parallel: int | None = Field(None, ge=1)  # `--array=...%N`
    extra: list[str] = Field(default_factory=list)  # further `#SBATCH` lines, e.g. "--qos=high"


class SweepSection(_Section):
    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.-]+$")
    out: str = "runs/scaling/sweep"
    nproc: int = Field(1, ge=1)
    cpus_per_rank: float = Field(1.0, gt=0)
    gpus_per_rank: float = Field(0.0, ge=0)
    mode: Literal["tokens", "isoflop", "wsd"] = "tokens"
    ladder: list[dict[str, Any]] = Field(default_factory=list)
    ladder_rule: LadderRule | None = None
    tokens: list[float] = Field(default_factory=list)
    flops: list[float] = Field(default_factory=list)
    flops_per_token: Literal["6N", "exact"] = "6N"
    n_params: Literal["non_embedding", "total"] = "non_embedding"
    seeds: list[int] = Field(default_factory=list)  # empty: the base train.seed
    min_steps: int = Field(1, ge=1)  # sizes whose budget gives fewer steps are left out
    # keep only trials with min <= D / N <= max (an IsoFLOP profile around its optimum, not the whole ladder)
    tokens_per_param: tuple[float, float] | None = None
    cooldown_fraction: float = Field(0.2, gt=0, lt=1)  # wsd: a fork decays over this share of its steps
    slurm: SlurmOptions = Field(default_factory=SlurmOptions)


@dataclass
class Trial:
    """One training run of the sweep (or, role ``wsd-stable``, the constant-LR run forks start from)."""

    index: int
    name: str
    role: str  # trial | wsd-stable
    rung: str
    config: dict  # the resolved training config (tracking tags are added when the parent exists)
    N_total: int
    N_non_embedding: int
    N: int
    D: int
    C: float
    seed: int
    steps: int
    C_budget: float | None = None
    fork_of: int | None = None  # index of the wsd-stable trial this one forks from
    fork_step: int | None = None
    segments: list[int] = field(default_factory=list)  # wsd-stable: the steps forks start at
    depends_on: list[int] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.config["train"]["run_dir"])

    def tags(self, n_kind: str) -> dict[str, str]:
        tags = {"scaling.role": self.role, "scaling.trial": self.name, "scaling.rung": self.rung, "N": self.N,
                "N_kind": n_kind, "N_total": self.N_total, "N_non_embedding": self.N_non_embedding, "D": self.D,
                "C": f"{self.C:.6g}", "seed": self.seed, "steps": self.steps}
        if self.C_budget is not None:
            tags["C_budget"] = f"{self.C_budget:.6g}"
        if self.fork_step is not None:
            tags["scaling.fork_step"] = self.fork_step
        return {k: str(v) for k, v in tags.items()}


@dataclass
class SweepSpec:
    path: Path
    sweep: SweepSection
    base: Config

    @property
    def out(self) -> Path:
        return Path(self.sweep.out).absolute()


def _sweep_problems(err: ValidationError) -> list[tuple[str, Any, str]]:
    return [("sweep." + ".".join(str(x) for x in e["loc"]), e.get("input"), e["msg"]) for e in err.errors()]


def load_sweep(path: str | Path, overrides: list[str] = ()) -> SweepSpec:
    """Read a sweep config; ``sweep.*`` overrides go to the sweep section, the rest to the base."""
    data = _read_yaml(Path(path))
    raw = data.pop("sweep", None)
    if not isinstance(raw, dict):
        raise ConfigError([("sweep", raw, "a sweep config needs a `sweep:` section (ladder and budgets); "
                                          "see configs/scaling/debug.yaml")])
    mine = [o for o in overrides if o.split("=", 1)[0].strip().startswith("sweep.")]
    raw = apply_overrides({"sweep": raw}, mine)["sweep"]
    try:
        section = SweepSection.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_sweep_problems(e)) from None
    base = config_from_dict(data, [o for o in overrides if o not in mine])
    _check_section(section, base)
    return SweepSpec(Path(path), section, base)


def _check_section(s: SweepSection, base: Config) -> None:
    problems = []
    if bool(s.ladder) == bool(s.ladder_rule):
        problems.append(("sweep.ladder", s.ladder, "give exactly one of sweep.ladder (a list of model.* settings) "
                                                   "and sweep.ladder_rule"))
    budgets = s.flops if s.mode == "isoflop" else s.tokens
    key = "sweep.flops" if s.mode == "isoflop" else "sweep.tokens"
    if not budgets or min(budgets) <= 0:
        problems.append((key, budgets, f"mode {s.mode} needs a non-empty list of positive budgets"))
    if not base.tracking.enabled:
        problems.append(("tracking.enabled", False, "a sweep records its trials as MLflow runs; enable tracking"))
    if base.train.batch_rampup is not None:
        problems.append(("train.batch_rampup", base.train.batch_rampup, "sweeps count tokens at a fixed batch"))
    if base.model.family != "gpt":
        problems.append(("model.family", base.model.family, "scaling sweeps count tokens of GPT models"))
    if problems:
        raise ConfigError(problems)


# ----------------------------------------------------------------------------------------------
# the ladder
# ----------------------------------------------------------------------------------------------
def rungs(s: SweepSection) -> list[tuple[str, str, dict]]:
    """(path for errors, name, model settings) per size."""
    if s.ladder_rule is None:
        out = []
        for i, rung in enumerate(s.ladder):
            rung = dict(rung)
            name = str(rung.pop("name", "")) or f"L{rung.get('num_layers', '?')}H{rung.get('hidden_size', '?')}"
            out.append((f"sweep.ladder[{i}] ({name})", name, rung))
        return out
    r = s.ladder_rule
    out = []
    for i, layers in enumerate(r.num_layers):
        hidden = max(r.head_dim, round(r.aspect_ratio * layers / r.head_dim) * r.head_dim)
        out.append((f"sweep.ladder_rule.num_layers[{i}] ({layers} layers)", f"L{layers}H{hidden}",
                    {"num_layers": layers, "hidden_size": hidden, "num_heads": hidden // r.head_dim}))
    return out


def count_params(cfg: Config, n_kind: str) -> tuple[int, int, int]:
    """(total, non-embedding, the one ``n_kind`` names) parameters of ``cfg.model``."""
    from pretrain.models import build_model, count_parameters

    meta = build_model(cfg.model, device="meta")
    total, non_emb = count_parameters(meta), count_parameters(meta, non_embedding=True)
    return total, non_emb, (non_emb if n_kind == "non_embedding" else total)


def with_sections(base: dict, where: str, **sections) -> Config:
    """The base config with ``sections`` merged in, validated; errors name ``where``."""
    data = copy.deepcopy(base)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError([(f"{where}: {p}", v, m) for p, v, m in e.problems]) from None


def _fmt(x: float) -> str:
    return f"{x:.4g}".replace("e+0", "e").replace("e+", "e")


# ----------------------------------------------------------------------------------------------
# the trials
# ----------------------------------------------------------------------------------------------
def plan(spec: SweepSpec) -> list[Trial]:
    """Every trial of the sweep, in the order they run (a WSD fork after its stable run)."""
    s, base = spec.sweep, to_dict(spec.base)
    seeds = s.seeds or [spec.base.train.seed]
    trials: list[Trial] = []
    for where, rung_name, rung in rungs(s):
        shape = with_sections(base, where, model=rung)
        dp = dp_size(shape, s.nproc)
        tokens_per_step = global_batch(shape, dp) * shape.data.seq_len
        total, non_emb, n = count_params(shape, s.n_params)
        flops_per_token = 6.0 * n if s.flops_per_token == "6N" else _exact_flops(shape)
        for seed in seeds:
            suffix = f"-s{seed}" if len(seeds) > 1 else ""
            common = dict(rung=rung_name, N_total=total, N_non_embedding=non_emb, N=n, seed=seed)
            if s.mode == "wsd":
                trials += _wsd_trials(spec, base, where, rung, rung_name + suffix, tokens_per_step, flops_per_token,
                                      len(trials), common)
                continue
            for budget in s.flops if s.mode == "isoflop" else s.tokens:
                d_target = budget / flops_per_token if s.mode == "isoflop" else budget
                steps = max(1, round(d_target / tokens_per_step))
                if steps < s.min_steps or not _in_range(s.tokens_per_param, steps * tokens_per_step / n):
                    continue
                label = f"C{_fmt(budget)}" if s.mode == "isoflop" else f"D{_fmt(budget)}"
                name = f"{rung_name}-{label}{suffix}"
                cfg = with_sections(base, where, model=rung, train=_train(spec, name, steps, seed, eval_at_end=True))
                trials.append(Trial(index=len(trials), name=name, role="trial", config=to_dict(cfg),
                                    D=steps * tokens_per_step, C=steps * tokens_per_step * flops_per_token,
                                    steps=steps, C_budget=budget if s.mode == "isoflop" else None, **common))
    if not trials:
        raise ConfigError([("sweep.min_steps", s.min_steps, "no trial of the ladder and budgets has that many steps "
                                                            "and a D / N inside sweep.tokens_per_param")])
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ConfigError([("sweep.ladder", names, "two trials share a name; give the rungs distinct `name`s")])
    return trials


def _in_range(bounds: tuple[float, float] | None, value: float) -> bool:
    return bounds is None or bounds[0] <= value <= bounds[1]


def _exact_flops(cfg: Config) -> float:
    from pretrain.models.flops import flops_per_token

    return flops_per_token(cfg.model, cfg.data.seq_len)


def _train(spec: SweepSpec, name: str, steps: int, seed: int, eval_at_end: bool) -> dict:
    """Per-trial train settings: its own run dir, length, seed, and one evaluation at the end."""
    return {"run_dir": str(spec.out / name), "steps": steps, "seed": seed,
            "eval_every": steps if eval_at_end else 0}


def _wsd_trials(spec: SweepSpec, base: dict, where: str, rung: dict, name: str, tokens_per_step: int,
                flops_per_token: float, first: int, common: dict) -> list[Trial]:
    """One constant-LR run to the last fork point, and per token budget a fork that decays over the
    last ``cooldown_fraction`` of its steps (Hagele et al. 2024): the fork at budget D_i trains to
    T_i steps, branching off the stable run at T_i - round(cooldown_fraction x T_i)."""
    s, b = spec.sweep, spec.base
    points = []
    for budget in sorted(s.tokens):
        steps = max(2, round(budget / tokens_per_step))
        cooldown = min(steps - 1, max(1, round(s.cooldown_fraction * steps)))
        points.append((budget, steps, steps - cooldown))
    for budget, steps, start in points:
        if start < b.schedule.warmup_steps:
            raise ConfigError([(f"sweep.tokens ({name})", budget, f"the fork at {steps} steps would branch off at "
                                f"step {start}, inside the warmup ({b.schedule.warmup_steps} steps)")])
    segments = sorted({start for _, _, start in points})
    every = b.checkpoint.every
    periodic = {k for k in range(every, segments[-1], every)} if every else set()
    stable_name = f"{name}-stable"
    keep = len(segments) + len(periodic - set(segments)) + 1  # no fork point may be pruned
    stable = with_sections(base, where, model=rung, schedule={"kind": "constant"},
                   train=_train(spec, stable_name, segments[-1], common["seed"], eval_at_end=False),
                   checkpoint={"keep_last": max(keep, b.checkpoint.keep_last)})
    trials = [Trial(index=first, name=stable_name, role="wsd-stable", config=to_dict(stable),
                    D=segments[-1] * tokens_per_step, C=segments[-1] * tokens_per_step * flops_per_token,
                    steps=segments[-1], segments=segments, **common)]
    for budget, steps, start in points:
        fork_name = f"{name}-D{_fmt(budget)}"
        # WSD's decay is ceil(decay_fraction x steps) steps long: aim half a step short of the cooldown
        fraction = (steps - start - 0.5) / steps
        cfg = with_sections(base, where, model=rung, schedule={"kind": "wsd", "decay_fraction": fraction},
                    train=_train(spec, fork_name, steps, common["seed"], eval_at_end=True))
        assert math.ceil(fraction * steps) == steps - start
        trials.append(Trial(index=first + len(trials), name=fork_name, role="trial", config=to_dict(cfg),
                            D=steps * tokens_per_step, C=steps * tokens_per_step * flops_per_token, steps=steps,
                            fork_of=first, fork_step=start, depends_on=[first], **common))
    return trials
