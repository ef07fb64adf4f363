"""Kill the whole workflow (driver and jobs, SIGKILL, as a node failure would) at random moments, restart
it each time as the README says, and end with exactly the results of an uninterrupted run; a cell that
finished training is never trained again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

GRID = {
    "grid": {"name": "crash", "visual_tokens": [1, 4, 16]},
    "data": {
        "source": "synthetic",
        "seed": 0,
        "train_images_per_family": 60,
        "test_images_per_family": 20,
        "questions_per_image": {"reasoning": 2, "ocr": 2},
        "tasks": ["colour", "read"],
    },
    "vision": {"steps": 30, "hidden_size": 32, "num_heads": 2, "num_layers": 1, "batch_size": 32},
    "train": {
        "batch_size": 16,
        "seed": 0,
        "warmup_frac": 0.03,
        "log_every": 10,
        "checkpoint_every": 20,
        "stage1": {"steps": 10, "lr": 0.001},
        "stage2": {"steps": 300, "lr": 0.003},
    },
    "llms": [
        {
            "name": "a",
            "source": "config",
            "arch": "qwen2",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_layers": 1,
            "num_heads": 2,
        },
        {
            "name": "b",
            "source": "config",
            "arch": "qwen2",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_layers": 2,
            "num_heads": 2,
        },
    ],
    "benchmarks": [{"name": "colour", "family": "reasoning"}, {"name": "read", "family": "ocr"}],
    "law": {"bootstrap": 10},
    "launch": {"executor": "local"},
    "tracking": {"experiment": "crash"},
}
VOLATILE = ("seconds", "latency", "run_id", "checkpoint", "time", "root", "code_version", "manifest", "job")


def snakemake(workdir: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "MPLBACKEND": "Agg"}
    cmd = [
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--profile",
        str(REPO / "profiles/local"),
        "--configfile",
        "grid.yaml",
        *args,
    ]
    with open(workdir / "driver.log", "a") as log:  # a file, not a pipe: a killed reader must not block it
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, **popen)


def run_to_end(workdir: Path) -> None:
    proc = snakemake(workdir)
    proc.wait(timeout=900)
    assert proc.returncode == 0, (workdir / "driver.log").read_text()[-4000:]


def finished_within(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def progress_lines(workdir: Path) -> int:
    logs = (workdir / "results/logs/submitit").glob("*_log.out")
    return sum(p.read_text(errors="replace").count("stage2 step") for p in logs)


def wait_for_training_progress(workdir: Path, proc: subprocess.Popen, lines: int) -> bool:
    """Wait until `lines` more training progress lines are logged; False if the run ends first."""
    target = progress_lines(workdir) + lines
    while proc.poll() is None:
        if progress_lines(workdir) >= target:
            return True
        time.sleep(0.2)
    return False


def stable(value):
    """A result with timings, paths and run ids removed: what must match between two runs."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not any(word in k for word in VOLATILE)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def results(workdir: Path) -> dict:
    files = sorted((workdir / "results/cells").rglob("*.json")) + sorted((workdir / "results/law").glob("*.json"))
    return {str(p.relative_to(workdir)): stable(json.loads(p.read_text())) for p in files}


def attempts(workdir: Path) -> dict[str, list[dict]]:
    out = {}
    for path in (workdir / "results/checkpoints").glob("*/v*/s*/attempts.jsonl"):
        cell = path.parent.relative_to(workdir / "results/checkpoints").as_posix()  # llm/vV/sSEED
        out[cell] = [json.loads(x) for x in path.read_text().splitlines()]
    return out


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
        proc = snakemake(crashed, start_new_session=True)
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
        snakemake(crashed, "--unlock").wait(timeout=120)
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
