"""Kill the whole workflow (driver and jobs, SIGKILL, as a node failure would) at random moments, restart
it each time as the README says, and end with exactly the results of an uninterrupted run; a cell that
finished training is never trained again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import attempts, grid_config, results, run_driver, wait_for_training_progress

pytestmark = pytest.mark.slow

GRID = grid_config("crash")


def run_to_end(workdir: Path) -> None:
    proc = run_driver(workdir)
    proc.wait(timeout=900)
    assert proc.returncode == 0, (workdir / "driver.log").read_text()[-4000:]


def finished_within(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_random_sigkills_then_restart_give_the_uninterrupted_results(tmp_path):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    for workdir in (reference, crashed):
        workdir.mkdir()
        (workdir / "grid.yaml").write_text(yaml.safe_dump(GRID))
    start = time.time()
    run_to_end(reference)
    duration = time.time() - start

    rng = random.Random(20261124)
    kills = 0
    for attempt in range(8):
        proc = run_driver(crashed, start_new_session=True)
        # The first kill lands at a random moment (data, tower, FLOPs or training); the next ones after
        # a random number of training progress lines, so they hit cells mid-training.
        if attempt == 0:
            killed = not finished_within(proc, rng.uniform(0.05, 0.3) * duration)
        else:
            killed = wait_for_training_progress(crashed, proc, lines=rng.randint(3, 25))
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and every job it started
            proc.wait()
            kills += 1
        # What a user does after a crash: release the dead driver's lock, then run again.
        run_driver(crashed, "--unlock").wait(timeout=120)
        if kills == 3 or not killed:
            break
    run_to_end(crashed)

    assert kills == 3
    resumed = [e for events in attempts(crashed).values() for e in events if e["event"] == "start" and e["step"] > 0]
    assert resumed, "no kill landed mid-training"
    assert results(crashed) == results(reference)
    for cell, events in attempts(crashed).items():
        first_finish = next(i for i, e in enumerate(events) if e["event"] == "finished")
        later = [e for e in events[first_finish + 1 :] if e["event"] == "finished"]
        assert all(e["steps_run"] == 0 for e in later), (cell, events)  # never trained again once finished
        starts = [e["step"] for e in events if e["event"] == "start"]
        assert starts == sorted(starts), (cell, events)  # every restart resumed, never went back
