"""Re-attaching to a job an earlier driver submitted (no Slurm needed: the job's files and squeue's answer
are what `launch.reattach` reads)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from submitit.core.utils import cloudpickle_dump

from vlmscale.orchestration import launch, preflight


@pytest.mark.parametrize(
    "outcome, state, reattached",
    [
        ("error", "COMPLETING", False),  # failed, Slurm still winding it down: a retry must resubmit
        ("error", "", False),
        ("success", "COMPLETING", True),
        ("success", "", True),  # finished and forgotten by Slurm: its result is reused
        (None, "RUNNING", True),  # still running: wait for it
        (None, "", False),  # gone without a result (cancelled, node lost): resubmit
    ],
)
def test_reattach_reuses_a_live_or_successful_job_and_never_a_failed_one(
    tmp_path, monkeypatch, outcome, state, reattached
):
    record = tmp_path / "cell.job.json"
    fields = {"job_id": "7", "executor": "slurm", "folder": str(tmp_path), "key": "k", "name": "cell", "tasks": 1}
    record.write_text(json.dumps(fields))
    if outcome:
        cloudpickle_dump((outcome, "the result or its traceback"), tmp_path / "7_0_result.pkl")
    monkeypatch.setattr(launch, "slurm_state", lambda job_id: state)
    cancelled = []
    monkeypatch.setattr(launch, "cancel", cancelled.append)
    job = launch.reattach(record, "k", "slurm", {"time_min": 30})  # edited resources: the same job
    assert (job is not None) == reattached and not cancelled
    assert launch.reattach(record, "another key", "slurm") is None  # other inputs: never the old job...
    assert cancelled == (["7"] if state in launch.ACTIVE_STATES else [])  # ...and never both running


def test_the_job_key_is_the_stage_inputs_without_operational_fields(tmp_path):
    from vlmscale.specs import TrainJob

    job = TrainJob({"cell": "a/v1/s0"}, "data", "tower.json", "ckpt", ops={"checkpoint_every": 100})
    operational = dataclasses.replace(job, ops={"checkpoint_every": 7}, tracking={"uri": "x"}, threads=4)
    assert launch.job_key(operational) == launch.job_key(job)
    assert launch.job_key(dataclasses.replace(job, spec={"cell": "a/v1/s1"})) != launch.job_key(job)


def test_slurm_jobs_ask_for_requeue_no_wckey_and_srun_cpus_unless_configured():
    params = launch.submitit_parameters({"cpus_per_task": 8, "sbatch": {"mail-type": "FAIL"}}, "slurm", "cell")
    assert params["slurm_additional_parameters"] == {"requeue": True, "mail-type": "FAIL"}
    assert params["slurm_wckey"] is None and params["slurm_srun_args"] == ["--cpus-per-task=8"]
    own = launch.submitit_parameters({"wckey": "lab", "sbatch": {"no-requeue": True}}, "slurm", "cell")
    assert own["slurm_wckey"] == "lab" and own["slurm_additional_parameters"] == {"no-requeue": True}
    import submitit

    script = submitit.slurm.slurm._make_sbatch_string(
        command="x", folder="/tmp/f", **{k[6:]: v for k, v in params.items() if k.startswith("slurm_")}
    )
    assert "#SBATCH --requeue" in script and "--wckey" not in script and "--cpus-per-task=8" in script


def test_gres_replaces_gpus_per_node_when_the_site_asks_for_it():
    import submitit

    params = launch.submitit_parameters({"gpus_per_node": 4, "gpu_request": "gres"}, "slurm", "cell")
    assert params["slurm_gres"] == "gpu:4" and "gpus_per_node" not in params
    script = submitit.slurm.slurm._make_sbatch_string(
        command="x", folder="/tmp/f", **{k[6:]: v for k, v in params.items() if k.startswith("slurm_")}
    )
    assert "#SBATCH --gres=gpu:4" in script and "--gpus-per-node" not in script
    default = launch.submitit_parameters({"gpus_per_node": 4}, "slurm", "cell")
    assert default["gpus_per_node"] == 4 and "slurm_gres" not in default


@pytest.mark.parametrize(
    "resources, gpus",
    [({"gpus_per_node": 8}, 8), ({"gres": "gpu:a100:2"}, 2), ({"gres": "gpu:3"}, 3), ({"cpus_per_task": 4}, 0)],
)
def test_the_gpus_a_job_asks_for_are_read_from_either_request(resources, gpus):
    assert preflight.requested_gpus(resources) == gpus


@dataclasses.dataclass(frozen=True)
class MarkerJob:
    marker: str
    executor: str = "inline"


def writes_marker(job: MarkerJob) -> dict:
    Path(job.marker).write_text("the stage ran")
    return {"ok": True}


def test_a_job_asking_for_gpus_it_cannot_see_fails_at_start_with_the_reason(tmp_path):
    """On a CPU machine (or any with fewer GPUs than asked): the job fails before the stage runs."""
    import cloudpickle
    import torch

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the job cannot import this test module
    more = torch.cuda.device_count() + 1
    with pytest.raises(
        launch.JobFailed, match=rf"GPUUnavailableError: {more} GPU\(s\) per node requested, but "
    ) as failed:
        launch.run(
            writes_marker,
            MarkerJob(str(tmp_path / "marker")),
            executor="local",
            log_dir=tmp_path / "jobs",
            name="gpu-cell",
            resources={"gpus_per_node": more},
        )
    assert ("CPU-only build" in str(failed.value)) == (torch.version.cuda is None)
    assert not (tmp_path / "marker").exists()  # failed before the stage started


def test_a_job_held_by_a_qos_limit_is_reported_and_cancelled_after_the_configured_wait(monkeypatch, capsys):
    """squeue's answer as a cluster with accounting gives it (the CI Slurm has no QOS limits to hit)."""
    answers = iter([("PENDING", "Priority")] + [("PENDING", "QOSMaxJobsPerUserLimit")] * 100)
    monkeypatch.setattr(launch, "slurm_state_and_reason", lambda job_id: next(answers))
    monkeypatch.setattr(launch, "finished", lambda job: False)
    cancelled = []
    monkeypatch.setattr(launch, "cancel", cancelled.append)
    job = type("Job", (), {"job_id": "42"})()
    with pytest.raises(launch.LaunchError, match=r"held by a QOS/association limit \(QOSMaxJobsPerUserLimit\)"):
        launch.wait_while_schedulable(job, "train:a/v1/s0", poll_s=0.01, max_poll_s=0.01, max_held_min=0.005)
    assert cancelled == ["42"]
    assert "job 42 PENDING QOSMaxJobsPerUserLimit" in capsys.readouterr().err  # reported when it began
    assert "max_held_min" not in str(launch.submitit_parameters({"max_held_min": 30}, "slurm", "x"))
