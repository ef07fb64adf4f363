"""Run a stage's callable `main(cfg) -> dict` in-process or through submitit (local, debug, slurm).

The Snakemake job (on a laptop, or a cluster's login node) calls `run`, which submits the callable and
waits for its result; job logs land in `log_dir`, and their location is printed for the rule's log.

On Slurm:
* resources (partition, account, GPUs, CPUs, memory, time, constraint, extra sbatch lines, setup lines)
  come from config (`launch.slurm`, overridden per LLM by `llms[].resources`), never from code;
* the callable is submitit-checkpointable: a preempted or timed-out job is requeued with the same
  sbatch script (so the same number of GPUs/tasks) and the stage resumes from its own checkpoints;
* each submission is recorded (`{log_dir}/{name}.job.json`); a restarted driver re-attaches to a job of
  the same stage and settings that is still queued, running or finished instead of submitting it twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import submitit

from vlmscale.choices import EXECUTORS
from vlmscale.fileio import canonical_json, spec_hash, write_json
from vlmscale.orchestration import preflight

# config key -> submitit parameter (AutoExecutor names; slurm_* are Slurm-only)
RESOURCE_KEYS = {
    "time_min": "timeout_min",
    "cpus_per_task": "cpus_per_task",
    "mem_gb": "mem_gb",
    "gpus_per_node": "gpus_per_node",
    "tasks_per_node": "tasks_per_node",
    "nodes": "nodes",
    "partition": "slurm_partition",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "sbatch": "slurm_additional_parameters",
    "setup": "slurm_setup",
    "signal_delay_s": "slurm_signal_delay_s",
    "max_requeues": "slurm_max_num_timeout",
    "wckey": "slurm_wckey",
}
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


class LaunchError(RuntimeError):
    """The scheduler refused the job (its own message is included), or the job could not be found."""


class JobFailed(RuntimeError):
    """A submitted stage raised; the message carries its final error line and where the traceback is."""


class Stage(submitit.helpers.Checkpointable):
    """A stage callable that Slurm may preempt: on requeue it is called again with the same cfg and
    resumes from the checkpoints it wrote itself (training keeps last.pt every checkpoint_every steps)."""

    def __init__(self, fn: Callable, gpus: int = 0):
        self.fn = fn
        self.gpus = gpus  # per node, as the job's resources ask: checked before anything loads

    def __call__(self, cfg) -> dict:
        # Compute nodes are often offline, and every rank contacting the Hub at start is load the Hub
        # rate-limits: models are resolved on the login node beforehand (`hf download`, README).
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.setdefault(key, "1")
        preflight.check_gpus(getattr(self, "gpus", 0))  # getattr: a job pickled before this field existed
        return self.fn(cfg)


def current_job() -> dict:
    """Inside a submitted job: its id and log files (linked from train.json and the MLflow run)."""
    if "SUBMITIT_FOLDER" not in os.environ:
        return {}
    env = submitit.JobEnvironment()
    return {
        "job_id": str(env.job_id),
        "executor": os.environ.get("SUBMITIT_EXECUTOR", ""),
        "stdout": str(env.paths.stdout.resolve()),
        "stderr": str(env.paths.stderr.resolve()),
    }


def submitit_parameters(resources: dict | None, executor: str, name: str) -> dict:
    resources = dict(resources or {})
    params = {"name": name, "timeout_min": resources.pop("time_min", 60)}
    gpu_request = resources.pop("gpu_request", "gpus_per_node")
    resources.pop("max_held_min", None)  # the driver's, not the job's (wait_while_schedulable)
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise LaunchError(f"launch resources: unknown keys {unknown}; known: {sorted(RESOURCE_KEYS)}")
    if executor == "slurm":
        if gpu_request == "gres" and resources.get("gpus_per_node"):
            # Sites without cons_tres (or that count GPUs per gres) take `--gres=gpu:N`, not --gpus-per-node
            params["slurm_gres"] = f"gpu:{resources.pop('gpus_per_node')}"
        params.update(slurm_defaults(resources))
        params.update({RESOURCE_KEYS[k]: v for k, v in resources.items() if v is not None and k != "sbatch"})
    return params


def executor_arguments(params: dict) -> dict:
    """Pop what submitit takes when the executor is built, not in update_parameters (which refuses
    `max_num_timeout`: `max_requeues` never reached a job before)."""
    return {k: params.pop(k) for k in ("slurm_max_num_timeout",) if k in params}


def slurm_defaults(resources: dict) -> dict:
    """What every Slurm job asks for unless the config says otherwise:
    * `--requeue`: where the cluster sets JobRequeue=0, `scontrol requeue` (the time-limit path) and
      PreemptMode=REQUEUE only requeue a job that asked for it;
    * no `--wckey` (submitit writes `--wckey=submitit`, which clusters enforcing wckeys reject); `wckey:` sets one;
    * srun's `--cpus-per-task` (Slurm 22.05-23.02 does not pass sbatch's on to srun, binding each task to one CPU)."""
    sbatch = dict(resources.get("sbatch") or {})
    params = {
        "slurm_additional_parameters": sbatch if "no-requeue" in sbatch else {"requeue": True, **sbatch},
        "slurm_wckey": resources.get("wckey") or None,  # None: submitit writes no --wckey line
    }
    if resources.get("cpus_per_task"):
        params["slurm_srun_args"] = [f"--cpus-per-task={resources['cpus_per_task']}"]
    return params


def run(
    fn: Callable,
    job_input,
    executor: str = "inline",
    log_dir: str | Path = "results/logs/submitit",
    name: str = "vlmscale",
    resources: dict | None = None,
) -> dict:
    """Run `fn(job_input)` (a stage's main and its typed job, vlmscale.specs) in-process or as a submitit
    job, and return its result. A Slurm job already submitted for the same input is re-attached."""
    if executor not in EXECUTORS:
        raise ValueError(f"launch.executor: unknown executor {executor!r}; choose from {EXECUTORS}")
    cfg = dataclasses.replace(job_input, executor=executor)
    if executor == "inline":
        return fn(cfg)
    record = Path(log_dir) / f"{safe_name(name)}.job.json"
    key = job_key(cfg)
    job = reattach(record, key, executor, resources)
    if job is None:
        job = submit(fn, cfg, executor, log_dir, name, resources)
        write_json(
            record,
            {
                "job_id": job.job_id,
                "executor": executor,
                "folder": str(log_dir),
                "key": key,
                "name": name,
                "resources": resources or {},
                "tasks": len(job._sub_jobs) or 1,
            },
        )
    print(
        f"[vlmscale] {name}: submitted job {job.job_id} ({executor}); logs: {job.paths.stdout}",
        file=sys.stderr,
        flush=True,
    )
    try:
        if executor == "slurm":
            wait_while_schedulable(job, name, max_held_min=(resources or {}).get("max_held_min"))
        return job.results()[0]  # a multi-task (one per GPU) job: rank 0 speaks for the cell
    except submitit.core.utils.UncompletedJobError as exc:
        raise JobFailed(
            f"{name}: job {job.job_id} failed: {last_error_line(str(exc))} (traceback: {job.paths.stderr})"
        ) from None
    finally:
        _echo(job.paths.stdout, "stdout")
        _echo(job.paths.stderr, "stderr")


def submit(fn, cfg, executor: str, log_dir, name: str, resources: dict | None):
    params = submitit_parameters(resources, executor, name)
    ex = submitit.AutoExecutor(folder=str(log_dir), cluster=executor, **executor_arguments(params))
    ex.update_parameters(**params)
    try:
        return ex.submit(Stage(fn, gpus=preflight.requested_gpus(resources)), cfg)
    except subprocess.CalledProcessError as exc:  # sbatch refused: show Slurm's own words
        said = (exc.output or b"").decode(errors="replace") if isinstance(exc.output, bytes) else (exc.output or "")
        raise LaunchError(f"{name}: Slurm refused the job: {said.strip() or exc}") from None
    except Exception as exc:
        text = str(exc)
        if "sbatch" in text or "error" in text.lower():
            raise LaunchError(f"{name}: Slurm refused the job: {sbatch_error(text)}") from None
        raise


def sbatch_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return " ".join(lines) if lines else text.strip()


# Job fields that say how a stage runs, not what it computes: a job differing only in them is the same job.
OPERATIONAL_FIELDS = ("ops", "tracking", "threads", "executor")


def job_key(cfg) -> str:
    """The stage's identity in its job record: its job input without the operational fields. Resources
    are not in it either: a driver restarted after editing them finds the job it submitted before."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OPERATIONAL_FIELDS}
    return spec_hash(canonical_json(fields))


def reattach(record: Path, key: str, executor: str, resources: dict | None = None):
    """The job this stage submitted before the driver died, if it is still queued, running, or finished
    with a result; None means submit afresh. Never two jobs for one stage (they would write the same
    checkpoints): a live job submitted for other inputs (an edited spec) is cancelled first."""
    if executor != "slurm" or not record.exists():
        return None
    previous = json.loads(record.read_text())
    job = submitit.SlurmJob(
        folder=previous["folder"], job_id=previous["job_id"], tasks=tuple(range(previous.get("tasks", 1)))
    )
    live = slurm_state(previous["job_id"]) in ACTIVE_STATES
    if previous.get("key") != key:
        if live:
            say(previous["name"], f"cancelling job {job.job_id}: it was submitted for other inputs")
            cancel(job.job_id)
        return None
    if failed(job):  # even while squeue still shows it COMPLETING: a retry must not replay the failure
        return None
    if (finished(job) and succeeded(job)) or live:
        say(previous["name"], f"re-attached to job {job.job_id} submitted by an earlier run")
        if live and previous.get("resources", resources or {}) != (resources or {}):
            say(
                previous["name"],
                f"job {job.job_id} keeps its old resources; `scancel {job.job_id}` to resubmit with the new ones",
            )
        return job
    return None


def say(name: str, message: str) -> None:
    print(f"[vlmscale] {name}: {message}", file=sys.stderr, flush=True)


def cancel(job_id: str) -> None:
    """scancel: Slurm sends SIGTERM first, so a training job checkpoints at its current step before it ends."""
    subprocess.run(["scancel", str(job_id)], capture_output=True)


def slurm_state(job_id: str) -> str:
    """The job's state from squeue (works without accounting); '' once Slurm has forgotten it."""
    return slurm_state_and_reason(job_id)[0]


def slurm_state_and_reason(job_id: str) -> tuple[str, str]:
    proc = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"], capture_output=True, text=True)
    if proc.returncode or not proc.stdout.strip():
        return "", ""
    state, _, reason = proc.stdout.strip().splitlines()[0].partition("|")
    return state, reason


# Pending reasons that no amount of waiting clears: the request exceeds what the partition can give.
NEVER_SCHEDULED = (
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
    "Resources_Unavailable",
)


def finished(job) -> bool:
    """Every task of the job has left its result (one task per GPU writes one each)."""
    return all(task.paths.result_pickle.exists() for task in (job._sub_jobs or [job]))


def succeeded(job) -> bool:
    """A finished job's outcome; a failed one is submitted afresh (a retry must not replay the failure)."""
    try:
        outcome, _ = submitit.core.utils.pickle_load((job._sub_jobs or [job])[0].paths.result_pickle)
    except Exception:
        return False
    return outcome == "success"


def failed(job) -> bool:
    """Rank 0 has left a result, and it is an error."""
    return (job._sub_jobs or [job])[0].paths.result_pickle.exists() and not succeeded(job)


# Pending reasons that clear when the user's or account's other jobs end (QOS and association limits):
# worth waiting for, up to `max_held_min`.
HELD_BY_LIMITS = ("QOS", "Assoc")


def held_too_long(job, name: str, reason: str, held_since: float | None, max_held_min: float | None) -> float | None:
    """When the job started being held by a QOS/association limit (None: it is not); past `max_held_min`
    the job is cancelled with the reason."""
    import time

    if not reason.startswith(HELD_BY_LIMITS):
        return None
    held_since = held_since or time.time()
    if max_held_min is not None and time.time() - held_since > max_held_min * 60:
        cancel(job.job_id)
        raise LaunchError(
            f"{name}: job {job.job_id} was held by a QOS/association limit ({reason}) for over {max_held_min} min "
            f"(launch resources max_held_min); cancelled. `sacctmgr show assoc user=$USER` / `sacctmgr show qos` "
            f"show the limits; fewer or smaller jobs at once (snakemake --jobs), or another qos/account, fit them"
        )
    return held_since


def wait_while_schedulable(
    job, name: str, poll_s: float = 0.5, max_poll_s: float = 10.0, max_held_min: float | None = None
) -> None:
    """Wait for the job to finish, printing its state changes; cancel it with Slurm's reason when it
    is pending for a reason that never clears (more CPUs/GPUs/memory/time than the partition has), or
    has been held by a QOS/association limit for longer than `max_held_min`."""
    import time

    last = None
    held_since = None
    while not finished(job):
        state, reason = slurm_state_and_reason(job.job_id)
        if (state, reason) != last:
            print(
                f"[vlmscale] {name}: job {job.job_id} {state or 'not in squeue'} {reason}".rstrip(),
                file=sys.stderr,
                flush=True,
            )
            last = (state, reason)
        if state == "PENDING" and reason in NEVER_SCHEDULED:
            cancel(job.job_id)
            raise LaunchError(
                f"{name}: Slurm cannot run job {job.job_id} as requested (pending reason: {reason}); "
                f"check the partition's limits (`scontrol show partition`) against launch.slurm / llms[].resources"
            )
        pending = state == "PENDING"
        held_since = held_too_long(job, name, reason, held_since, max_held_min) if pending else None
        if not state and not finished(job):
            time.sleep(poll_s)  # between squeue forgetting the job and the result appearing on a shared FS
            if not finished(job):
                return  # let submitit report what happened
        time.sleep(poll_s)
        poll_s = min(max_poll_s, poll_s * 1.5)  # short jobs return fast; long ones cost squeue little


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


class _QuietSacct(logging.Filter):
    """Clusters without accounting (no slurmdbd) make submitit warn on every poll; squeue still works."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bypassing sacct error" not in record.getMessage()


logging.getLogger("submitit").addFilter(_QuietSacct())


def last_error_line(trace: str) -> str:
    """The `SomeError: message` line of a Python traceback (what a user needs first)."""
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.split(".")[-1].endswith(("Error", "Exception", "Diverged", "Checkpoint", "Memory")):
            return line
    return lines[-1] if lines else trace


def _echo(path: Path, label: str) -> None:
    # Copy the job's own output into the rule's log, where a user looks first.
    try:
        text = Path(path).read_text()
    except OSError:
        return
    if text.strip():
        print(f"----- job {label} ({path}) -----\n{text.rstrip()}", file=sys.stderr)
