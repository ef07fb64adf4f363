"""Run a stage's callable `main(cfg) -> dict` in-process or through submitit (local, debug, slurm).

The Snakemake job (on a laptop, or a cluster's login node) calls `run`, which submits the callable and
waits for its result; job logs land in `log_dir`, and their location is printed for the rule's log.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

EXECUTORS = ("inline", "debug", "local", "slurm")


def run(fn: Callable[[dict], dict], cfg: dict, executor: str = "inline", log_dir: str | Path = "results/logs/submitit",
        name: str = "vlmscale", resources: dict | None = None) -> dict:
    if executor not in EXECUTORS:
        raise ValueError(f"launch.executor: unknown executor {executor!r}; choose from {EXECUTORS}")
    cfg = {**cfg, "executor": executor}
    if executor == "inline":
        return fn(cfg)
    import submitit

    ex = submitit.AutoExecutor(folder=str(log_dir), cluster=executor)
    ex.update_parameters(name=name, timeout_min=(resources or {}).get("timeout_min", 60))
    if executor == "slurm" and resources:
        ex.update_parameters(**{k: v for k, v in resources.items() if k != "timeout_min"})
    job = ex.submit(fn, cfg)
    print(f"[vlmscale] {name}: submitted job {job.job_id} ({executor}); logs: {job.paths.stdout}", file=sys.stderr)
    try:
        return job.result()
    except submitit.core.utils.FailedJobError as exc:
        raise JobFailed(f"{name}: job {job.job_id} failed: {last_error_line(str(exc))} "
                        f"(traceback: {job.paths.stderr})") from None
    finally:
        _echo(job.paths.stdout, "stdout")
        _echo(job.paths.stderr, "stderr")


class JobFailed(RuntimeError):
    """A submitted stage raised; the message carries its final error line and where the traceback is."""


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
