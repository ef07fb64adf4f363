"""Before a job that asked for GPUs loads anything: the GPUs are visible and CUDA works.

Without this check a node whose driver is older than the torch wheel's CUDA (or a CPU-only wheel, or an
allocation without the GPUs) trains on the CPU with gloo while holding its GPUs, for the whole time limit.
"""

from __future__ import annotations

import os
import re
import socket
import warnings


class GPUUnavailableError(RuntimeError):
    """The job asked for GPUs that it cannot use; the message says why and what to change."""


def requested_gpus(resources: dict | None) -> int:
    """GPUs per node a job's resources ask for: gpus_per_node, or the count in a gres request (gpu:4, gpu:a100:4)."""
    resources = resources or {}
    if resources.get("gpus_per_node"):
        return int(resources["gpus_per_node"])
    match = re.fullmatch(r"gpu(?::[^:,]+)?:(\d+)", str(resources.get("gres") or ""))
    return int(match.group(1)) if match else 0


def check_gpus(requested: int) -> None:
    """Raise GPUUnavailableError unless CUDA works and at least `requested` GPUs are visible here."""
    if requested <= 0:
        return
    import torch

    with warnings.catch_warnings(record=True) as said:  # torch warns why CUDA is unusable (old driver, ...)
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
        visible = torch.cuda.device_count() if usable else 0
    if usable and visible >= requested:
        return
    where = (
        f"on {socket.gethostname()} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
        f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})"
    )
    raise GPUUnavailableError(f"{requested} GPU(s) per node requested, but {why(usable, visible, said)} {where}")


def why(usable: bool, visible: int, said: list) -> str:
    import torch

    if torch.version.cuda is None:
        return "this torch is a CPU-only build: install a CUDA build of torch for the cluster's driver"
    if not usable:
        told = "; ".join(str(w.message).strip().splitlines()[0] for w in said) or "torch found no usable CUDA device"
        return (
            f"CUDA is not usable ({told}); if `nvidia-smi` lists GPUs on this node, its driver is older than the "
            f"CUDA this torch wheel needs: install the torch wheel for the CUDA version nvidia-smi shows, or load "
            f"a newer driver/CUDA module in launch.slurm.setup"
        )
    return (
        f"only {visible} are visible: the allocation does not hold them (check gpus_per_node / gres against the "
        f"partition's GPUs, `scontrol show node`)"
    )
