"""The step loop's host side (issue 16, items 6 and 8): the next step's micro-batches are read
while this step computes, a checkpoint's loader state leaves the read-ahead batches out, a resumed
run equals an uninterrupted one, the loop makes one host sync per step, and the throughput window
(MFU, in both counts) leaves evaluation and checkpoint time out.

One subprocess (``python -m tests.test_prefetch --worker``) runs the real trainer twice on one
rank -- 6 steps of the debug GPT with a batch ramp-up (1, 2, 4, 4, 4, 4 micro-batches), evaluation
and a checkpoint every 2 steps, then a job resumed from the step-2 checkpoint -- and records what
the loop does: the watchdog's progress marks, every read of the training loader, every host sync
made in ``pretrain/trainer.py`` (``.item()``, ``.tolist()``, ``float(t)``, ...), each throughput
window and the metrics sent to the tracker. The trainer's clock is a fake one that moves 1 s per
step and 1000 s per evaluation or save, so the windows are exact numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = 6
ACCUM = {1: 1, 2: 2, 3: 4, 4: 4, 5: 4, 6: 4}  # micro-batches per step: batch_rampup [2, 2, 6] up to 8, micro 2
PEAK = 1e12
OVERRIDES = [f"train.steps={STEPS}", "checkpoint.every=2", "checkpoint.keep_last=3", "train.eval_every=2", "train.eval_steps=2",
             "train.log_every=2", "tracking.enabled=false", "train.micro_batch_size=2", "train.global_batch_size=8",
             "train.batch_rampup=[2,2,6]", "data.seq_len=32", "train.hang_timeout_s=0"]
SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")


# ------------------------------------------------------------------------------------------------
# the worker (runs in its own process: it patches torch.Tensor and the trainer's clock)
# ------------------------------------------------------------------------------------------------
def _worker(out: Path, work: Path) -> None:
    import time
    from types import SimpleNamespace

    import torch

    from pretrain import trainer as T
    from pretrain.config import load_config
    from pretrain.data.loader import Loader
    from pretrain.tracking import NullTracker
    from pretrain.watchdog import Watchdog

    events: list = []
    clock = [0.0]
    T.time = SimpleNamespace(perf_counter=lambda: clock[0], sleep=time.sleep)  # the trainer's clock only

    def wrap(owner, name, before):
        original = getattr(owner, name)

        def wrapper(self, *args, **kwargs):
            before(self, *args, **kwargs)
            return original(self, *args, **kwargs)

        setattr(owner, name, wrapper)

    def mark(self, step, phase):
        if phase == "all-reduce":
            clock[0] += 1.0  # one second of training per step
        events.append(["mark", step, phase])

    def read(self):
        if self.spec.train:
            events.append(["read", self._state["batches"]])

    def pause(self, *args):
        clock[0] += 1000.0  # an evaluation or a save: 1000 s that no throughput window may count

    wrap(Watchdog, "mark", mark)
    wrap(Loader, "__next__", read)
    wrap(T.Trainer, "evaluate", pause)
    wrap(T.Trainer, "_save", pause)
    wrap(T.Trainer, "_log", lambda self, step, loss, seconds, items, steps: events.append(
        ["window", step, seconds, items, steps]))
    wrap(NullTracker, "log_metrics", lambda self, metrics, step: events.append(["metrics", step, metrics]))
    for name in SYNCS:
        def sync(self, *args, _name=name, **kwargs):
            caller = sys._getframe(2).f_code  # wrapper <- sync; the frame that called the tensor method
            if caller.co_filename == T.__file__:
                events.append(["sync", _name, caller.co_name])
        wrap(torch.Tensor, name, sync)

    runs = {}
    resume = work / "straight" / "checkpoints" / "step00000002"
    for name, extra in (("straight", []), ("resumed", [f"checkpoint.resume={resume}"])):
        events.clear()
        cfg = load_config(REPO / "configs/gpt/debug.yaml", [f"train.run_dir={work / name}", *OVERRIDES, *extra])
        result = T.train(cfg)
        runs[name] = {"events": list(events), "losses": {str(k): v for k, v in result.losses.items()},
                      "start_step": result.start_step, "final_step": result.final_step}
    out.write_text(json.dumps(runs))


# ------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    from tests.dist.helpers import TIMEOUT_SCALE, env

    work = tmp_path_factory.mktemp("prefetch")
    out = work / "runs.json"
    proc = subprocess.run([sys.executable, "-m", "tests.test_prefetch", "--worker", str(out), str(work)], cwd=REPO,
                          env=env({"PRETRAIN_PEAK_FLOPS": str(PEAK)}), capture_output=True, text=True,
                          timeout=300 * TIMEOUT_SCALE)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {**json.loads(out.read_text()), "work": work}


def _reads_by_phase(events: list) -> Counter:
    """(step, phase, n-th time this step entered the phase) -> training-loader reads made there."""
    where, seen, reads = None, Counter(), Counter()
    for event in events:
        if event[0] == "mark":
            seen[tuple(event[1:])] += 1
            where = (event[1], event[2], seen[tuple(event[1:])])
        elif event[0] == "read":
            reads[where] += 1
    return reads


def _loader_batches(run_dir: Path, step: int) -> int:
    return json.loads((run_dir / "checkpoints" / f"step{step:08d}" / "loader" / "rank_00000.json").read_text())["batches"]


def _phases(events: list, step: int) -> list[str]:
    return [e[2] for e in events if e[0] == "mark" and e[1] == step and e[2] in ("data", "forward", "backward",
                                                                                  "optimizer", "all-reduce")]


def test_next_steps_batches_are_read_while_the_step_computes(runs):
    """Step k+1's micro-batches are read right after step k's last backward, before its optimizer
    step (the watchdog's phase says "data" meanwhile); as many as step k+1 takes under the ramp-up;
    nothing is read at a step's start after the first, nor after the last step."""
    for run, first in (("straight", 1), ("resumed", 3)):
        events = runs[run]["events"]
        for k in range(first, STEPS + 1):
            micro = ["forward", "backward", "optimizer"] * ACCUM[k]
            if k < STEPS:
                micro.insert(-1, "data")  # between the last backward and the last optimizer step
            assert _phases(events, k) == ["data", *micro, "all-reduce"], (run, k)
        # the first step of a job reads its own batches; every other step's were read ahead
        expected = Counter({(first, "data", 1): ACCUM[first]})
        expected.update({(k, "data", 2): ACCUM[k + 1] for k in range(first, STEPS)})
        assert _reads_by_phase(events) == expected, run


def test_checkpointed_loader_state_leaves_the_read_ahead_batches_out(runs):
    """At steps 2 and 4 the next step's 4 batches are already read; the checkpoint's loader state
    still points at the first batch not trained on."""
    straight, resumed = runs["work"] / "straight", runs["work"] / "resumed"
    trained = {k: sum(ACCUM[s] for s in range(1, k + 1)) for k in (2, 4, 6)}  # 3, 11, 23
    assert {k: _loader_batches(straight, k) for k in (2, 4, 6)} == trained
    assert {k: _loader_batches(resumed, k) for k in (4, 6)} == {4: trained[4], 6: trained[6]}


def test_a_resumed_run_equals_the_uninterrupted_one(runs):
    """The job resumed at step 2 (and it did: it starts at step 2 and trains steps 3-6 only) gives
    the uninterrupted run's losses bit for bit."""
    straight, resumed = runs["straight"], runs["resumed"]
    assert straight["start_step"] == 0 and sorted(map(int, straight["losses"])) == list(range(1, STEPS + 1))
    assert resumed["start_step"] == 2 and resumed["final_step"] == STEPS
    assert sorted(map(int, resumed["losses"])) == list(range(3, STEPS + 1))
    assert {k: straight["losses"][k] for k in resumed["losses"]} == resumed["losses"]


def test_one_host_sync_per_step(runs):
    """``pretrain/trainer.py`` makes one host sync per step (the all-reduced loss and stop flag),
    however many micro-batches the step has; one more before the loop (any rank's early stop signal)."""
    for run in ("straight", "resumed"):
        step, per_step = None, Counter()
        for event in runs[run]["events"]:
            if event[0] == "mark":
                step = event[1]
            elif event[0] == "sync":
                per_step[step] += 1
        first = runs[run]["start_step"] + 1
        assert per_step == Counter({None: 1, **{k: 1 for k in range(first, STEPS + 1)}}), run


def test_the_throughput_window_counts_training_only_and_mfu_has_both_counts(runs):
    """Every window is 1 s per step although an evaluation and a save (1000 s each) fall into each
    one after the first; MFU from that window, in both counts, goes to the tracker."""
    from pretrain.config import load_config
    from pretrain.models.flops import anchor_flops_per_token, flops_per_token

    cfg = load_config(REPO / "configs/gpt/debug.yaml", ["train.run_dir=unused", *OVERRIDES])
    exact, anchor = flops_per_token(cfg.model, 32), anchor_flops_per_token(cfg.model, 32)
    assert anchor > exact  # the published count takes attention as full, not causal
    events = runs["straight"]["events"]
    windows = [e[1:] for e in events if e[0] == "window"]
    assert [(step, seconds, steps) for step, seconds, _, steps in windows] == [(2, 2.0, 2), (4, 2.0, 2), (6, 2.0, 2)]
    tokens = {step: items for step, _, items, _ in windows}
    assert tokens == {k: (ACCUM[k - 1] + ACCUM[k]) * 2 * 32 for k in (2, 4, 6)}  # micro 2 x seq 32 per micro-batch
    logged = {e[1]: e[2] for e in events if e[0] == "metrics" and "train/loss" in e[2]}
    for step, items in tokens.items():
        assert logged[step]["train/mfu_6n_12lht"] == pytest.approx(anchor * items / 2.0 / PEAK, rel=1e-12)
        assert logged[step]["train/mfu_causal_exact"] == pytest.approx(exact * items / 2.0 / PEAK, rel=1e-12)
        assert logged[step]["train/step_time_s"] == 1.0


def test_prefetched_batches_stay_out_of_the_checkpointed_loader_state():
    """The ``Prefetcher`` alone: batches read ahead for the next step are not consumed; the state a
    checkpoint takes between steps restarts a fresh loader at the first batch not trained on."""
    import torch

    from pretrain.config import load_config
    from pretrain.data import build_loader
    from pretrain.prefetch import Prefetcher

    cfg = load_config(REPO / "configs/gpt/debug.yaml", ["train.micro_batch_size=2"])
    batches = Prefetcher(build_loader(cfg, "train", 0, 1, train=True))
    first = next(batches)
    batches.prefetch(3)  # the next step's three micro-batches, read while this step computes
    state = batches.state_dict()
    assert state["batches"] == 1
    again = Prefetcher(build_loader(cfg, "train", 0, 1, train=True))
    again.load_state_dict(state)
    resumed = [next(again)["input_ids"] for _ in range(3)]
    for batch in resumed:
        assert torch.equal(batch, next(batches)["input_ids"])
    assert not torch.equal(first["input_ids"], resumed[0])
    assert batches.state_dict() == again.state_dict()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker(Path(sys.argv[2]), Path(sys.argv[3]))
