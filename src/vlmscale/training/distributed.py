"""One training step, in one process (plain PyTorch) or in several (DeepSpeed ZeRO, one process per GPU,
or per CPU with gloo). The same training loop drives both.

The world comes from the environment a launcher sets (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, as
torchrun does); inside a multi-task Slurm job submitit's TorchDistributedEnvironment exports them. Each
rank takes its equal share of the global batch, so the averaged gradient, the clipped update and the
logged loss are those of the single-process step on the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from vlmscale.specs import GRADIENT_BUCKET


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """This process's rank and world, with the rendezvous variables always exported: DeepSpeed, even for
    one process, reads RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT and, missing them, falls back to
    MPI discovery (`ModuleNotFoundError: mpi4py` on a one-GPU ZeRO cell)."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        # A task of a Slurm job, one or many: Slurm's own numbering wins over any RANK that sbatch copied
        # from the submitting shell's environment.
        export_slurm_world()
    elif "RANK" not in os.environ:  # one process outside a launcher: a world of one, on a port free here
        os.environ.update(local_world(0, 1, free_port()))
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def export_slurm_world() -> None:
    import submitit

    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # submitit draws the rendezvous port from 20000-60000, inside Linux's ephemeral range (32768+),
        # where another process's outgoing connection can already hold it. Every task derives the same
        # port from the job id, below that range.
        port = RENDEZVOUS_PORTS[0] + int(os.environ["SLURM_JOB_ID"]) % RENDEZVOUS_PORTS[1]
    else:  # one task agrees with no one: a port free on this node (several one-GPU jobs may share it)
        port = free_port()
    os.environ["MASTER_PORT"] = str(port)  # not one copied from the submitting shell
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def free_port() -> int:
    """A TCP port free on this machine now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_world(rank: int, size: int, port: int) -> dict[str, str]:
    """What a launcher (torchrun; srun through submitit) sets for one of `size` processes on this machine:
    how tests and benchmarks run ranks by hand (DeepSpeed needs a process group even for one)."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}  # fmt: skip


RENDEZVOUS_PORTS = (15000, 15000)  # first port, how many: 15000-29999, below the ephemeral range
RENDEZVOUS_TIMEOUT_S = 300  # a rank that never arrives fails the job in minutes, not torch's 30


def share(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's equal, contiguous share of the global batch."""
    if len(indices) % world.size:
        raise ValueError(
            f"train.batch_size ({len(indices)}) must be divisible by the number of processes ({world.size})"
        )
    return indices.chunk(world.size)[world.rank]


def mean_across(values: torch.Tensor, world: World) -> torch.Tensor:
    if world.size == 1:
        return values
    import torch.distributed as dist

    values = values.detach().clone()
    dist.all_reduce(values)
    return values / world.size


def barrier(world: World) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


class Stepper(Protocol):
    """One training stage's optimizer over the model: in one process (TorchStepper) or through a DeepSpeed
    engine (DeepSpeedStepper). The trainer sees only this."""

    model: torch.nn.Module  # what the forward pass runs: the module, or DeepSpeed's engine around it
    optimizer: torch.optim.Optimizer
    casts_weights: bool  # True: the weights themselves are bf16 (no autocast in the loss)

    def accumulate(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None: ...

    def save(self, folder: Path, tag: str) -> dict: ...

    def restore(self, saved: dict, folder: Path) -> None: ...

    def release(self) -> None: ...


class TorchStepper:
    """Plain AdamW with global-norm clipping at 1.0 (one process; bf16 runs as autocast over fp32 weights)."""

    casts_weights = False  # the weights stay fp32: bf16 is the loss's autocast

    def __init__(self, model, params, lr: float, weight_decay: float):
        self.model, self.params = model, params
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def accumulate(self, loss: torch.Tensor) -> None:
        """Add this micro-batch's gradients (its loss already weighted by its share of the step)."""
        loss.backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save(self, folder: Path, tag: str) -> dict:
        """What a mid-stage checkpoint must keep of the optimizer: its whole state, in last.pt."""
        return {"optimizer": self.optimizer.state_dict()}

    def restore(self, saved: dict, folder: Path) -> None:
        if saved.get("optimizer"):
            self.optimizer.load_state_dict(saved["optimizer"])

    def release(self) -> None:
        pass  # the model is the plain module throughout


class DeepSpeedStepper:
    """The same update through a DeepSpeed engine with ZeRO stage `zero` (0-3) over the processes; with
    `bf16`, DeepSpeed's bf16 mode as LLaVA's scripts/zero2.json and zero3.json run it: bf16 weights and
    activations, fp32 master weights and moments in the optimizer's partitions."""

    def __init__(self, model, params, lr: float, weight_decay: float, zero: int, micro_batch: int, accumulation: int,
                 bf16: bool = False):  # fmt: skip
        import deepspeed

        init_process_group()
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)  # a torch optimizer: no extra op build
        config = deepspeed_config(zero, micro_batch, accumulation, bf16)
        self.zero, self.casts_weights = zero, bf16
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.model = self.engine

    def accumulate(self, loss: torch.Tensor) -> None:
        # The loss is already weighted by its share of the step: DeepSpeed must not divide it again. Its
        # step() after each micro-batch only counts them, and updates at the accumulation boundary.
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()

    def step(self) -> None:
        pass  # the engine stepped at the last micro-batch's boundary

    def save(self, folder: Path, tag: str) -> dict:
        """Every rank writes its partition of the optimizer's state (and, under ZeRO-3, of the weights)
        through DeepSpeed's checkpoint API; frozen weights are left out (they are rebuilt on resume)."""
        self.engine.save_checkpoint(str(folder), tag=tag, save_latest=False, exclude_frozen_parameters=True)
        return {"deepspeed_tag": tag}

    def restore(self, saved: dict, folder: Path) -> None:
        tag = saved.get("deepspeed_tag")
        if not tag:
            return
        path, _ = self.engine.load_checkpoint(
            str(folder), tag=tag, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise FileNotFoundError(f"DeepSpeed checkpoint {folder / tag} is missing or unreadable")

    def release(self) -> None:
        """Hand the module back whole and drop the engine's hooks, so the next stage (or the final save)
        sees plain tensors: ZeRO-3 leaves each rank holding only its slice of every weight."""
        if self.zero == 3:
            gather_partitioned(self.engine.module)
        self.engine.destroy()


def deepspeed_config(zero: int, micro_batch: int, accumulation: int, bf16: bool) -> dict:
    """LLaVA's scripts/zero2.json (stage <= 2) or zero3.json. Their "auto" sizes, which Hugging Face's
    Trainer fills from the hidden size, are DeepSpeed's defaults here but for the gradient bucket
    (`specs.GRADIENT_BUCKET` says why)."""
    zero_optimization = {"stage": zero, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
                         "reduce_bucket_size": GRADIENT_BUCKET}  # fmt: skip
    if zero == 3:
        zero_optimization |= {
            "stage3_max_live_parameters": 1e9,
            "stage3_max_reuse_distance": 1e9,
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": 1.0,
        "zero_optimization": zero_optimization,
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
    }


def gather_partitioned(module: torch.nn.Module) -> None:
    """Replace each ZeRO-3 partitioned parameter by a plain one holding the whole tensor (one gather per
    parameter, so the peak is one weight, not the model; shared parameters stay shared)."""
    from deepspeed.runtime.zero import GatheredParameters

    whole: dict[int, torch.nn.Parameter] = {}
    for owner in module.modules():
        for name, param in list(owner.named_parameters(recurse=False)):
            if id(param) not in whole:
                with GatheredParameters([param]):
                    whole[id(param)] = torch.nn.Parameter(param.data.clone(), requires_grad=param.requires_grad)
            setattr(owner, name, whole[id(param)])


def init_process_group() -> None:
    """Initialise torch.distributed once: NCCL on GPUs, gloo on CPU (DeepSpeed's CPU accelerator)."""
    import torch.distributed as dist

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        from datetime import timedelta

        import deepspeed

        deepspeed.init_distributed(
            dist_backend="nccl" if torch.cuda.is_available() else "gloo",
            timeout=timedelta(seconds=RENDEZVOUS_TIMEOUT_S),
        )


def make_stepper(model, params, stage, weight_decay: float, world: World, bf16: bool = False) -> Stepper:
    """The stage's update (`stage`: a specs.StageSettings): plain AdamW in one process unless the stage asks
    for a ZeRO stage or the job has several processes; each process takes batch_size / world of the batch.
    `bf16` under DeepSpeed is its bf16 mode; in one plain process, autocast (the caller's)."""
    if stage.zero_stage is None and world.size == 1:
        model.float()  # fp32 weights under autocast (a no-op unless a DeepSpeed bf16 stage came before)
        return TorchStepper(model, params, stage.lr, weight_decay)
    micro, accumulation = stage.micro_batch(world.size), stage.accumulation(world.size)
    zero = stage.zero_stage or 0
    return DeepSpeedStepper(model, params, stage.lr, weight_decay, zero, micro, accumulation, bf16)
