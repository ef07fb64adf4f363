"""Re-attaching to a job an earlier driver submitted (no Slurm needed: the job's files and squeue's answer
are what `launch.reattach` reads)."""

from __future__ import annotations

import json

import pytest
from submitit.core.utils import cloudpickle_dump

from vlmscale.orchestration import launch


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
    job = launch.reattach(record, "k", "slurm")
    assert (job is not None) == reattached
    assert launch.reattach(record, "another key", "slurm") is None  # other settings: never the old job


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
