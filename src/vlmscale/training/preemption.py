"""Checkpoint on Slurm's signals, at the current step.

Slurm tells a job it must stop in two ways: the time-limit warning (USR2, `--signal=USR2@signal_delay_s`,
which submitit asks for) and preemption (SIGTERM, then SIGKILL after the partition's GraceTime/KillWait).
Saving from inside a signal handler could interrupt a collective or a half-written tensor, so the
handlers only set a flag; the training loop reads it at each step boundary (every rank, agreed through
the step's existing all-reduce, so all ranks save the same step: DeepSpeed's save is collective), saves
a checkpoint there, and leaves:

* USR2: rank 0 hands the signal to submitit's own handler, which requeues the job (`scontrol requeue`)
  and exits; the other ranks wait for the requeue to end them (exiting first could make srun kill rank 0
  in the middle of its requeue).
* SIGTERM: every rank exits. With PreemptMode=REQUEUE Slurm requeues the job itself; with CANCEL (or a
  user's scancel) the job ends, and the rerun rule resumes from this checkpoint.
"""

from __future__ import annotations

import signal
import sys
import time

import torch

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
_caught: dict[int, bool] = {}
_previous: dict[int, object] = {}


def install() -> None:
    """Replace submitit's USR2 (checkpoint and requeue at once) and SIGTERM (ignored) handlers with a flag;
    keep submitit's USR2 handler to requeue with after our checkpoint."""
    for sig in SIGNALS:
        previous = signal.signal(sig, _flag)
        if previous is not _flag:
            _previous[sig] = previous


def _flag(signum, frame) -> None:
    _caught[signum] = True
    print(f"[vlmscale] caught {signal.Signals(signum).name}: checkpointing at the next step boundary", flush=True)


def flags(device) -> torch.Tensor:
    """This rank's [USR2 caught, SIGTERM caught], as floats to all-reduce with the step's statistics."""
    return torch.tensor([float(_caught.get(sig, False)) for sig in SIGNALS], device=device)


def leave(agreed: torch.Tensor, rank: int) -> None:
    """After the checkpoint: exit the way the signal asks (any rank's flag counts; SIGTERM wins)."""
    usr2, term = (bool(x > 0) for x in agreed.tolist())
    if term or not usr2:
        print("[vlmscale] checkpoint saved; leaving for preemption (Slurm requeues or cancels the job)", flush=True)
        sys.exit(-1)  # SystemExit: submitit writes no result, so the driver waits for the requeued job
    print("[vlmscale] checkpoint saved; requeueing for the time limit", flush=True)
    handler = _previous.get(signal.SIGUSR2)
    if rank == 0 and callable(handler):
        handler(signal.SIGUSR2, None)  # submitit's: requeue, then sys.exit
        sys.exit(-1)
    if rank == 0:  # not under submitit (a test, a hand-run job): nothing to requeue with
        sys.exit(-1)
    while True:  # the requeue kills this task with the job; rank 0 failing to requeue ends the step too
        time.sleep(60)


def reset() -> None:
    """Forget caught signals (tests run several cells in one process)."""
    _caught.clear()
