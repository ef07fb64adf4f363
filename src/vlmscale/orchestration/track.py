"""MLflow tracking: one experiment per grid, a parent run per grid, one child run per cell.

The JSON files are the source of truth; MLflow is the browsing view. Logging failures never stop a
cell: they are reported on stderr and `vlmscale track-sync` (the workflow's last rule) replays every
cell's results into its run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vlmscale.identity import OLD_RUN_KEY_TAG, RUN_KEY_TAG

CELL_TAG = "vlmscale.cell"
GRID_TAG = "vlmscale.grid"
PARENT_TAG = "vlmscale.parent"
NOTE_TAG = "mlflow.note.content"  # a run's or experiment's description, Markdown, shown by the UI
KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment on its runs table for this kind,
MODEL_TRAINING = "custom_model_development"  # not on the GenAI traces overview


def quiet_mlflow() -> None:
    """MLflow's documented opt-out of its usage telemetry, for this process and every job it starts."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def resolve_uri(uri: str) -> str:
    """Make a relative sqlite URI absolute, so jobs started in another folder use the same store."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _warn(what: str, exc: Exception) -> None:
    print(f"[vlmscale] MLflow {what} failed ({type(exc).__name__}: {exc}); results are kept in JSON", file=sys.stderr)


# A tracking call's time budget (each overridable in the environment). MLflow's own defaults (120 s timeout,
# 7 retries with backoff) cost rank 0 about 249 s per call against a refusing port while the other ranks
# wait in a collective: a dead server could time the whole job out. The JSON files are the record anyway.
HTTP_BUDGET = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def client_for(uri: str):
    for key, value in HTTP_BUDGET.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=resolve_uri(uri))


def ensure_experiment(client, name: str, artifact_root: str | None = None) -> str:
    """The experiment, created as a model-training one (older stores get the kind tag added)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get(KIND_TAG) != MODEL_TRAINING:
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, MODEL_TRAINING)
        return exp.experiment_id
    location = Path(artifact_root).resolve().as_uri() if artifact_root else None
    return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: MODEL_TRAINING})


def init_store(uri: str, experiment: str, grid: str, artifact_root: str | None = None) -> dict:
    """Create the store, the experiment and the grid's parent run once, before parallel jobs: parallel
    first creation corrupts sqlite, and parallel cells would each create a parent run."""
    uri = resolve_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    client = client_for(uri)
    exp = ensure_experiment(client, experiment, artifact_root)
    return {"experiment_id": exp, "parent_run_id": parent_run_id(client, exp, grid), "uri": uri}


def find_runs(client, experiment_id: str, tags: dict) -> list:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return client.search_runs([experiment_id], filter_string=query, max_results=1000)


def parent_run_id(client, experiment_id: str, grid: str) -> str:
    runs = find_runs(client, experiment_id, {PARENT_TAG: "true", GRID_TAG: grid})
    if runs:
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"grid:{grid}", tags={PARENT_TAG: "true", GRID_TAG: grid})
    return run.info.run_id


def cell_run(client, experiment_id: str, grid: str, cell: str, key: str, tags: dict) -> tuple[str, bool]:
    """The run of `cell` for its current key: found (a resumed or replayed cell continues it) or created
    under the grid's parent, tagging the cell's older runs as superseded. Returns (run_id, created)."""
    same = [
        run
        for tag in (RUN_KEY_TAG, OLD_RUN_KEY_TAG)
        for run in find_runs(client, experiment_id, {CELL_TAG: cell, tag: key, GRID_TAG: grid})
    ]
    if same:
        return same[0].info.run_id, False
    for old in find_runs(client, experiment_id, {CELL_TAG: cell, GRID_TAG: grid}):
        client.set_tag(old.info.run_id, "vlmscale.superseded", "true")
    parent = parent_run_id(client, experiment_id, grid)
    tags = {**tags, CELL_TAG: cell, RUN_KEY_TAG: key, GRID_TAG: grid, "mlflow.parentRunId": parent}
    return client.create_run(experiment_id, run_name=cell, tags=tags).info.run_id, True


class CellTracker:
    """Context manager for a cell's run; resumes the run of the same cell and spec after a requeue."""

    def __init__(self, uri: str, experiment: str, grid: str, cell: str, key: str, params: dict, tags: dict):
        self.uri, self.experiment, self.grid = uri, experiment, grid
        self.cell, self.run_key, self.params, self.tags = cell, key, params, tags
        self.client = None
        self.run_id: str | None = None

    @classmethod
    def for_cell(cls, spec: dict, tracking: dict, key: str, executor: str = "inline") -> "CellTracker":
        """The tracker of a cell's training job; `key` is the cell's run key (vlmscale.identity)."""
        from vlmscale.fileio import code_version
        from vlmscale.orchestration.launch import current_job

        tags = {
            "llm": spec["llm"]["name"],
            "visual_tokens": str(spec["visual_tokens"]),
            "seed": str(spec["train"]["seed"]),
            "compressor": spec["compressor"],
            "code_version": code_version(),
            "executor": executor,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "flop_convention": "2*N*(Q+V)",
        }
        job = current_job()
        if job:
            tags.update(job_id=job["job_id"], job_log=job["stdout"])
        tracking = tracking or {}
        return cls(
            tracking.get("uri", ""),
            tracking.get("experiment", "vlmscale"),
            tracking.get("grid", "grid"),
            spec["cell"],
            key,
            flatten(spec),
            tags,
        )

    def __enter__(self) -> "CellTracker":
        if not self.uri:
            return self
        try:
            self.client = client_for(self.uri)
            self.run_id = self._start()
        except Exception as exc:
            _warn("start", exc)
            self.client = None
        return self

    def _start(self) -> str:
        exp = ensure_experiment(self.client, self.experiment)
        run_id, created = cell_run(self.client, exp, self.grid, self.cell, self.run_key, self.tags)
        if not created:  # resumed (requeue, restart): point the run at the job doing the work now
            for key in ("slurm_job_id", "job_id", "job_log", "executor"):
                if self.tags.get(key):
                    self.client.set_tag(run_id, key, self.tags[key])
        if created:
            from mlflow.entities import Param

            items = [Param(k, str(v)[:6000]) for k, v in sorted(self.params.items())]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i : i + 100])
        return run_id

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        if self.client is None or self.run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        try:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        except Exception as exc:
            _warn("log_metrics", exc)
            self.client = None  # one failure is enough: the rest goes to JSON only; track_sync replays it

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.client is None or self.run_id is None:
            return
        try:
            self.client.set_terminated(self.run_id, "FAILED" if exc_type else "FINISHED")
        except Exception as err:
            _warn("finish", err)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train_main(job) -> dict:
    """The train stage's entry point (pickled by submitit): train one cell, log it to MLflow, write train.json.

    It lives here, not in `training`, so that the trained weights' code fingerprint (the closure of
    `vlmscale.training.trainer`'s imports) leaves tracking and submission out: editing them retrains nothing.
    """
    from vlmscale.fileio import write_json
    from vlmscale.identity import run_key
    from vlmscale.orchestration.launch import current_job
    from vlmscale.training.distributed import world_from_env
    from vlmscale.training.trainer import train_cell

    if not world_from_env().is_main:
        return _closing_process_group(train_cell(job))
    with CellTracker.for_cell(job.spec, job.tracking, run_key(job.spec), job.executor) as tracker:
        result = train_cell(job, tracker=tracker)
        result["mlflow_run_id"] = tracker.run_id
        result["job"] = current_job()  # where this cell's job log is (empty when run in-process)
        tracker.log_metrics({"train_seconds": result["train_seconds"], "final_loss": result["final_loss"] or 0.0})
    write_json(job.out, result)
    return _closing_process_group(result)


def _closing_process_group(result: dict) -> dict:
    """Destroy a finished multi-process job's process group (torch's advice) rather than leave it to the
    interpreter's exit, where a communication thread still alive can abort a process whose work is done and
    saved. A one-process job keeps its group: a caller may train another cell in the same process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.destroy_process_group()
    return result
