"""On a real Slurm (single node, started by .ci/start-slurm): the small grid through submitit gives the
local executor's results; a preempted training job is requeued and resumes to the uninterrupted result
in one MLflow run; a killed driver re-attaches to its jobs; bad cluster settings fail with Slurm's words.

Skipped, with the reason, where no Slurm answers (run `.ci/start-slurm` as root to get one).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import attempts, grid_config, results, run_driver, wait_for_training_progress

REPO = Path(__file__).resolve().parents[1]
ACCOUNT = "vlmscale"  # the test cluster's job_submit policy requires it, as many sites do
TEST_CLUSTER = "vlmscale-test"


def slurm_ready() -> str | None:
    if shutil.which("sinfo") is None:
        return "no Slurm client here: run .ci/start-slurm as root to start a single-node Slurm"
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    states = proc.stdout.split()
    if proc.returncode or not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"Slurm does not answer or has no usable node (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    if f"= {TEST_CLUSTER}" not in config:  # never submit test jobs to a real cluster's queue
        return f"the Slurm here is not the test cluster '{TEST_CLUSTER}' started by .ci/start-slurm"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(slurm_ready() is not None, reason=str(slurm_ready()))]

CLUSTER_GRID = grid_config("crash")
CLUSTER_GRID["train"]["stage2"]["steps"] = 150
CLUSTER_GRID["tracking"]["experiment"] = "cluster"


def grid_config(executor: str) -> dict:
    cfg = copy.deepcopy(CLUSTER_GRID)
    cfg["launch"] = {
        "executor": executor,
        "slurm": {"account": ACCOUNT, "cpus_per_task": 1, "mem_gb": 2, "time_min": 20},
    }
    return cfg


def run_grid(workdir: Path, executor: str) -> Path:
    workdir.mkdir(exist_ok=True)
    (workdir / "grid.yaml").write_text(yaml.safe_dump(grid_config(executor)))
    proc = run_driver(workdir)
    proc.wait(timeout=1500)
    assert proc.returncode == 0, (workdir / "driver.log").read_text()[-5000:]
    return workdir


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory) -> Path:
    return run_grid(tmp_path_factory.mktemp("cluster") / "local", "local")


@pytest.fixture(scope="module")
def slurm_grid(tmp_path_factory) -> Path:
    return run_grid(tmp_path_factory.mktemp("cluster") / "slurm", "slurm")


def test_grid_on_slurm_gives_the_local_executors_results(local_grid, slurm_grid):
    assert results(slurm_grid) == results(local_grid)
    trained = json.loads((slurm_grid / "results/cells/a/avgpool/v4/s0/train.json").read_text())
    assert trained["job"]["executor"] == "slurm" and Path(trained["job"]["stdout"]).exists()
    assert "stage2 step 150/150" in Path(trained["job"]["stdout"]).read_text()  # the log a user opens
    con = sqlite3.connect(slurm_grid / "results/mlflow.db")
    job_tags = dict(
        con.execute("""SELECT t.key, t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid
                         WHERE r.name = 'a/avgpool/v4/s0' AND t.key IN ('slurm_job_id', 'job_log')""").fetchall()
    )
    con.close()
    assert job_tags["slurm_job_id"] == trained["job"]["job_id"] and job_tags["job_log"] == trained["job"]["stdout"]


def train_cfg(workdir: Path, grid: Path) -> dict:
    """A `vlmscale train` job for cell b/v16, reading the finished grid's data and tower features."""
    from vlmscale import config as vcfg
    from vlmscale.specs import TrainJob

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg.update(copy.deepcopy(CLUSTER_GRID))
    from snakemake.utils import validate

    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"), set_default=True)
    spec = vcfg.cell_spec(cfg, "b", 16)
    spec["train"]["stage2"]["steps"] = 600  # long enough to be preempted mid-run
    tracking = {"uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": "preempt", "grid": "preempt"}
    return TrainJob(
        spec,
        str(grid / "results/data"),
        str(grid / "results/vision/tower.json"),
        str(workdir / "ckpt"),
        str(workdir / "train.json"),
        tracking,
    )


def read_attempts(ckpt: Path) -> list[dict]:
    path = ckpt / "attempts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def preempt(job, how: str) -> None:
    """USR2: the time-limit warning, as submitit's handler reads it (checkpoint, then `scontrol requeue`).
    SIGTERM: what Slurm's PreemptMode=REQUEUE does to a running job (and `scontrol requeue`, used here,
    does exactly that): SIGTERM to every task, SIGKILL after KillWait (5 s on the test cluster), the job
    requeued by Slurm itself. Not `job._interrupt()` for USR2: its SIGTERM, sent a moment before, can land
    on the `scontrol requeue` that the handler starts and kill it (seen once in CI)."""
    if how == "USR2":
        job._interrupt(timeout=True)
    else:
        subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True, capture_output=True)


@pytest.mark.parametrize("signal_name", ["USR2", "SIGTERM"])
def test_preempted_training_is_requeued_and_resumes_to_the_same_result(slurm_grid, tmp_path, signal_name):
    import submitit

    from vlmscale.orchestration import launch, track
    from vlmscale.training import trainer as train

    reference = train_cfg(tmp_path / "reference", slurm_grid)
    expected = train.train_cell(reference, log=lambda m: None)

    cfg = train_cfg(tmp_path / "preempted", slurm_grid)
    cfg = dataclasses.replace(cfg, ops={"checkpoint_every": 100_000})  # only the signal saves
    track.init_store(cfg.tracking["uri"], "preempt", "preempt")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="slurm")
    executor.update_parameters(
        **launch.submitit_parameters({"account": ACCOUNT, "cpus_per_task": 1, "mem_gb": 2}, "slurm", "preempt")
    )
    job = executor.submit(launch.Stage(track.train_main), dataclasses.replace(cfg, executor="slurm"))
    deadline = time.time() + 300
    while not read_attempts(tmp_path / "preempted/ckpt"):  # training has started (handlers installed)
        assert time.time() < deadline and not job.done(), job.stderr()
        time.sleep(0.2)
    preempt(job, signal_name)
    result = job.result()

    events = read_attempts(tmp_path / "preempted/ckpt")
    starts = [e["step"] for e in events if e["event"] == "start"]
    signalled = [e["step"] for e in events if e["event"] == "signalled"]
    assert starts[0] == 0 and starts[1:] == signalled and len(signalled) == 1, events  # saved on the signal, resumed
    assert {e["slurm_job_id"] for e in events} == {job.job_id}  # same job id, requeued
    assert result["history"] == expected["history"] and result["final_loss"] == expected["final_loss"]
    con = sqlite3.connect(tmp_path / "preempted/mlflow.db")
    runs = con.execute("SELECT run_uuid, status FROM runs WHERE name = 'b/avgpool/v16/s0'").fetchall()
    con.close()
    assert len(runs) == 1 and runs[0][1] == "FINISHED"


def long_cell(cfg, steps: int):
    spec = copy.deepcopy(cfg.spec)
    spec["train"]["stage2"]["steps"] = steps
    return dataclasses.replace(cfg, spec=spec, ops={"checkpoint_every": 100_000})  # only the signal saves


def steps_for(seconds: float, grid: Path, workdir: Path) -> int:
    """Stage-2 steps that train for about `seconds` on this machine (a fixed count is minutes too long on
    a busy CI runner or finishes inside one attempt on a fast one)."""
    from vlmscale.training import trainer as train

    calibration = train.train_cell(long_cell(train_cfg(workdir, grid), 400), log=lambda m: None)
    return max(1000, int(round(400 * seconds / calibration["train_seconds"], -2)))


def test_a_time_limit_far_shorter_than_training_finishes_over_requeues_with_the_same_weights(slurm_grid, tmp_path):
    """A one-minute job limit, USR2 40 s before it: each attempt trains a few seconds (~6 s measured here,
    after a ~25 s wait to be requeued), checkpoints at the step it is on when the signal comes and
    requeues; ~35 s of training finishes over several attempts with the uninterrupted weights."""
    import submitit

    from vlmscale.orchestration import launch, track
    from vlmscale.training import trainer as train
    from vlmscale.training.checkpoint import read_final

    steps = steps_for(35, slurm_grid, tmp_path / "calibration")
    # The uninterrupted run first: beside the job it would slow the job's start to most of an attempt
    train.train_cell(long_cell(train_cfg(tmp_path / "reference", slurm_grid), steps), log=lambda m: None)
    cfg = long_cell(train_cfg(tmp_path / "limited", slurm_grid), steps)
    track.init_store(cfg.tracking["uri"], "preempt", "preempt")
    limits = {"account": ACCOUNT, "cpus_per_task": 1, "mem_gb": 2, "time_min": 1, "signal_delay_s": 40}
    params = launch.submitit_parameters({**limits, "max_requeues": 30}, "slurm", "limited")
    executor = submitit.AutoExecutor(
        folder=str(tmp_path / "jobs"), cluster="slurm", **launch.executor_arguments(params)
    )
    executor.update_parameters(**params)
    job = executor.submit(launch.Stage(track.train_main), dataclasses.replace(cfg, executor="slurm"))
    job.result()
    events = read_attempts(tmp_path / "limited/ckpt")
    signalled = [e["step"] for e in events if e["event"] == "signalled"]
    starts = [e["step"] for e in events if e["event"] == "start"]
    assert len(signalled) >= 2 and starts[1:] == signalled, events  # each attempt resumed where the last saved
    _, a = read_final(tmp_path / "reference/ckpt/final")
    _, b = read_final(tmp_path / "limited/ckpt/final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_driver_reattaches_to_running_jobs(local_grid, tmp_path):
    workdir = tmp_path / "driver"
    workdir.mkdir()
    (workdir / "grid.yaml").write_text(yaml.safe_dump(grid_config("slurm")))
    proc = run_driver(workdir, start_new_session=True)
    assert wait_for_training_progress(workdir, proc, lines=4), (workdir / "driver.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the login-node driver dies; its Slurm jobs keep running
    proc.wait()
    running = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
    assert "train:" in running, running
    run_driver(workdir, "--unlock").wait(timeout=120)
    proc = run_driver(workdir)
    proc.wait(timeout=1500)
    log = (workdir / "driver.log").read_text()
    assert proc.returncode == 0, log[-5000:]
    reattached = "".join(p.read_text() for p in (workdir / "results/logs/train").rglob("*.log"))
    assert "re-attached to job" in reattached
    for cell, events in attempts(workdir).items():
        assert [e["event"] for e in events] == ["start", "finished"], (cell, events)  # trained once
    assert results(workdir) == results(local_grid)


@pytest.mark.parametrize(
    "resources, slurm_says",
    [
        ({"partition": "gpu-a100"}, "invalid partition specified: gpu-a100"),
        ({"gpus_per_node": 4}, "Invalid generic resource (gres) specification"),
        ({"account": None}, "this cluster needs --account=vlmscale"),
        ({"cpus_per_task": 64}, "pending reason: PartitionConfig"),
    ],
)
def test_bad_cluster_settings_fail_with_slurms_message_and_the_cell(local_grid, tmp_path, resources, slurm_says):
    workdir = tmp_path / "bad"
    cfg = grid_config("slurm")
    cfg["launch"]["slurm"].update(resources)
    cfg["launch"]["slurm"] = {k: v for k, v in cfg["launch"]["slurm"].items() if v is not None}
    (workdir / "results").mkdir(parents=True)
    (workdir / "grid.yaml").write_text(yaml.safe_dump(cfg))
    for stage in ("data", "vision"):  # prepared and encoded already: only the cells go to Slurm
        shutil.copytree(local_grid / "results" / stage, workdir / "results" / stage)
    start = time.time()
    proc = run_driver(workdir, "--until", "train")
    proc.wait(timeout=300)
    assert proc.returncode != 0 and time.time() - start < 200  # fails, does not hang
    logs = {
        p.relative_to(workdir / "results/logs/train").as_posix()[: -len(".log")]: p.read_text()
        for p in (workdir / "results/logs/train").rglob("*.log")
    }
    assert len(logs) == 6, logs.keys()
    for cell, text in logs.items():
        assert f"vlmscale train [{cell}]: error: train:{cell}:" in text and slurm_says in text, text


def test_two_task_slurm_job_trains_a_cell_with_deepspeed(slurm_grid, tmp_path):
    """One task per GPU (here per CPU): submitit's distributed environment, DeepSpeed ZeRO-2, rank 0
    writes; the loss curve is the single-process one."""
    from vlmscale.orchestration import launch, track
    from vlmscale.training import trainer as train

    reference = train_cfg(tmp_path / "reference", slurm_grid)
    reference.spec["train"]["stage2"]["steps"] = 60
    expected = train.train_cell(reference, log=lambda m: None)

    cfg = train_cfg(tmp_path / "two", slurm_grid)
    cfg.spec["train"]["stage2"]["steps"] = 60
    cfg.spec["train"]["zero_stage"] = {"stage1": 2, "stage2": 2}
    cfg = dataclasses.replace(cfg, tracking={})
    resources = {"account": ACCOUNT, "tasks_per_node": 2, "cpus_per_task": 1, "mem_gb": 4, "time_min": 15}
    result = launch.run(
        track.train_main, cfg, executor="slurm", log_dir=tmp_path / "jobs", name="train:b/v16", resources=resources
    )
    assert result["world_size"] == 2 and json.loads((tmp_path / "two/train.json").read_text())["world_size"] == 2
    for ours, single in zip(result["history"], expected["history"]):
        assert ours["loss"] == pytest.approx(single["loss"], rel=1e-3), (ours, single)


def test_a_retry_resubmits_a_failed_job_but_reattaches_a_finished_one(tmp_path):
    import cloudpickle

    from vlmscale.orchestration import launch

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job cannot import this test module
    resources = {"account": ACCOUNT, "cpus_per_task": 1, "mem_gb": 1}
    flag = tmp_path / "fail-once"
    flag.write_text("x")
    cfg = FlagJob(str(flag))
    with pytest.raises(launch.JobFailed, match="RuntimeError: failing once"):
        launch.run(fails_once, cfg, executor="slurm", log_dir=tmp_path / "jobs", name="flaky", resources=resources)
    first = json.loads((tmp_path / "jobs/flaky.job.json").read_text())["job_id"]
    assert launch.run(
        fails_once, cfg, executor="slurm", log_dir=tmp_path / "jobs", name="flaky", resources=resources
    ) == {"ok": True}
    second = json.loads((tmp_path / "jobs/flaky.job.json").read_text())["job_id"]
    assert second != first  # the failure was not replayed
    assert launch.run(
        fails_once, cfg, executor="slurm", log_dir=tmp_path / "jobs", name="flaky", resources=resources
    ) == {"ok": True}
    assert json.loads((tmp_path / "jobs/flaky.job.json").read_text())["job_id"] == second  # finished: re-attached


@dataclasses.dataclass(frozen=True)
class FlagJob:
    flag: str
    executor: str = "inline"


def fails_once(job: FlagJob) -> dict:
    flag = Path(job.flag)
    if flag.exists():
        flag.unlink()
        raise RuntimeError("failing once")
    return {"ok": True}
