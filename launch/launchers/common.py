"""What every launcher shares: the job (config, overrides, world), its checks, templates, quoting.

A launcher turns a ``Job`` into a ``Plan``: the text ``--dry-run`` prints (commands, rendered
files) and the action that hands the job to its engine. The job is checked for every world the
launcher may start before any plan is made, with ``pretrain train``'s own checks and messages.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
TRAIN_MODULE = "launch.train_cli"


class LaunchError(ValueError):
    """A launch option that cannot work (exit 2, before anything starts)."""


@dataclass
class Job:
    config: str  # as given ("default" or a path)
    overrides: list[str]
    cfg: object  # the resolved pretrain.config.Config
    worlds: list[int]  # every world size the launcher may start (elastic: several)
    notes: list[str] = field(default_factory=list)

    @property
    def config_path(self) -> str:
        """The config for the ranks: absolute, since they may start in another directory."""
        return self.config if self.config == "default" else os.path.abspath(self.config)

    @property
    def run_dir(self) -> str:
        return self.cfg.train.run_dir

    def train_args(self) -> list[str]:
        return [self.config_path, *self.overrides]

    def train_command(self, python: str | None = None) -> list[str]:
        return [python or sys.executable, "-m", TRAIN_MODULE, *self.train_args()]

    def job_id(self) -> str:
        """A name every node derives alike: from the run dir as the config gives it."""
        return "pretrain-" + hashlib.sha1(self.run_dir.encode()).hexdigest()[:10]

    def summary(self, launcher: str) -> str:
        from pretrain.config import dp_size, global_batch

        parts = []
        for w in self.worlds:
            dp = dp_size(self.cfg, w)
            parts.append(f"world {w} = data {dp} x tensor {self.cfg.parallel.tensor_size}, "
                         f"global batch {global_batch(self.cfg, dp)}")
        return f"# pretrain launch --launcher {launcher}: " + "; ".join(parts)


@dataclass
class Plan:
    text: str  # what --dry-run prints: exactly what would run
    execute: Callable[[], int]


def with_resume(overrides: list[str]) -> list[str]:
    """Jobs that restart (elastic, requeued) continue from the latest checkpoint, unless the user
    chose a checkpoint to resume from."""
    if any(o.split("=", 1)[0] == "checkpoint.resume" for o in overrides):
        return list(overrides)
    return [*overrides, "checkpoint.resume=auto"]


def check_job(config: str, overrides: list[str], worlds: list[int]) -> Job:
    """Load the config and run ``pretrain train``'s checks for each world; ConfigError on the first
    that fails (the message says which world)."""
    from launch.train_cli import load_checked
    from pretrain.config import ConfigError

    cfg = None
    for w in worlds:
        try:
            cfg = load_checked(config, overrides, w)
        except ConfigError as e:
            if len(worlds) > 1:
                raise ConfigError([*e.problems[:-1], (*e.problems[-1][:2],
                                   f"{e.problems[-1][2]} (this launch may start {w} ranks)")]) from None
            raise
    return Job(config=config, overrides=list(overrides), cfg=cfg, worlds=list(worlds))


def parse_range(text: str, what: str) -> tuple[int, int]:
    """``N`` or ``MIN:MAX`` (torchrun's ``--nnodes``), positive, MIN <= MAX."""
    m = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", str(text))
    if not m:
        raise LaunchError(f"{what} {text}: expected N or MIN:MAX")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if lo < 1 or hi < lo:
        raise LaunchError(f"{what} {text}: need 1 <= MIN <= MAX")
    return lo, hi


def quote(cmd: list[str]) -> str:
    return " ".join(shlex.quote(str(c)) for c in cmd)


_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def render_template(path: str | Path, values: dict[str, object]) -> str:
    """Fill ``{{ name }}`` fields of a template (bash's own ``${VAR}`` stays untouched). A field
    the template uses but ``values`` lacks is an error, so an edited template cannot half-render."""
    text = Path(path).read_text()
    unknown = sorted({m.group(1) for m in _FIELD.finditer(text)} - set(values))
    if unknown:
        raise LaunchError(f"template {path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(values))}")
    return _FIELD.sub(lambda m: str(values[m.group(1)]), text)


def write_file(path: str | Path, text: str, mode: int = 0o644) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return path


def exec_command(cmd: list[str], env: dict | None = None) -> int:
    """Hand this process over to the engine's own command (signals reach it directly)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env or dict(os.environ))
    return 127  # not reached
