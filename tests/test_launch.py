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
