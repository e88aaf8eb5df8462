"""Hang diagnosis from the ranks' heartbeats, the watchdog ending a real process, and the fault drill grammar."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pretrain.faults import parse
from pretrain.watchdog import EXIT_HANG, diagnose


def _beat(step, phase, age=0.0):
    return {"step": step, "phase": phase, "time": time.time() - age}


def test_the_rank_everybody_waits_for_is_named():
    beats = {1: _beat(3, "data"), 2: _beat(3, "all-reduce"), 3: _beat(3, "optimizer")}
    culprits, text = diagnose(beats, me=0, mine=(3, "all-reduce"), stalled=7.0, timeout=5, world=4)
    assert culprits == [1] and "rank(s) 1 stopped making progress in data of step 3" in text


def test_a_rank_whose_heartbeat_stopped_is_named_first():
    beats = {1: _beat(3, "all-reduce", age=60), 2: _beat(3, "all-reduce")}
    culprits, text = diagnose(beats, me=0, mine=(3, "all-reduce"), stalled=9.0, timeout=5, world=4)
    assert culprits == [1, 3] and "sent no heartbeat" in text  # 3 never sent one


def test_all_ranks_stuck_at_the_same_point_name_none():
    beats = {1: _beat(5, "backward")}
    culprits, text = diagnose(beats, me=0, mine=(5, "backward"), stalled=9.0, timeout=5, world=2)
    assert culprits == [] and "all 2 ranks stopped in backward of step 5" in text


def test_the_watchdog_ends_a_process_that_stops_making_progress():
    code = ("import time\nfrom pretrain.watchdog import Watchdog\n"
            "w = Watchdog(1.0, rank=0, world=1).start()\nw.mark(7, 'forward')\ntime.sleep(60)\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_HANG, proc.stderr
    assert "all 1 ranks stopped in forward of step 7" in proc.stderr and "train.hang_timeout_s=1" in proc.stderr
    assert time.monotonic() - started < 50  # not the 60 s sleep


def test_fault_drills_parse_or_are_refused():
    (f,) = parse("kill@backward:5")
    assert (f.action, f.point, f.step, f.rank) == ("kill", "backward", "5", 0)
    assert [(x.action, x.point, x.step, x.rank) for x in parse("hang@step:r7/1, usr1@setup")] == [
        ("hang", "step", "r7", 1), ("usr1", "setup", None, 0)]
    for bad in ("kill@nowhere:3", "explode@step:3", "kill@step", "term@setup:4", "kill@step:x"):
        with pytest.raises(ValueError, match="PRETRAIN_FAULT"):
            parse(bad)
