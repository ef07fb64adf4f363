"""A cell's checkpoints: what each holds, and the `Checkpointer` that writes and reads them, sized for a
cluster.

* While stage 1 trains (LLM frozen), `last.pt` holds what it trains, the compressor and projector (and
  the optimizer's state): the frozen LLM is rebuilt from its source on resume (a pretrained checkpoint,
  or the seeded random initialisation), so 35 cells do not each re-save a copy of it.
* While stage 2 trains, `last.pt` holds every trained weight and the optimizer's state.
* A finished cell is the folder `final/`: `llm/`, the LLM as `save_pretrained` writes it (safetensors,
  bf16 when the cell trains in bf16, else fp32; `AutoModelForCausalLM.from_pretrained` loads it),
  `adapters.safetensors` (the adapter, `adapter.*`: compressor and projector, always saved in fp32
  whatever the training dtype, so a TokenPacker / QueCC projector can be compared with a reference
  checkpoint at full precision) and `final.json` (the run key and the LLM's dtype).
  `last.pt` then keeps the training state alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vlmscale.fileio import atomic_torch_save
from vlmscale.specs import STAGES

LLM_PREFIX = "llm."


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The VLM's weights outside the LLM: the adapter (compressor and projector)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(LLM_PREFIX)}


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a full or an adapters-only state dict (a stage-1 checkpoint: the LLM stays as built)."""
    adapters_only = not any(k.startswith(LLM_PREFIX) for k in weights)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    absent = [k for k in missing if not (adapters_only and k.startswith(LLM_PREFIX))]
    if unexpected or absent:
        raise KeyError(f"checkpoint does not match the model: missing {absent[:3]}, unexpected {unexpected[:3]}")


def save_final(folder: Path, model: torch.nn.Module, run_key: str, dtype: torch.dtype) -> Path:
    """Write final/ next to a temporary copy and swap it in, so a kill leaves the old one or the new one."""
    final, tmp = folder / "final", folder / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per shard in a job log says nothing
    llm = model.llm
    state = {k: v.detach().to(dtype) for k, v in llm.state_dict().items()}
    llm.save_pretrained(tmp / "llm", state_dict=state, safe_serialization=True)
    from safetensors.torch import save_file

    adapters = {k: v.detach().float().contiguous() for k, v in adapter_state(model).items()}  # fp32, as documented
    save_file(adapters, str(tmp / "adapters.safetensors"))
    (tmp / "final.json").write_text(json.dumps({"run_key": run_key, "dtype": str(dtype).replace("torch.", "")}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def read_final(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(final.json, the VLM's full state dict in fp32) of a final/ folder; raises on anything unreadable."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "final.json").read_text())
    weights = {k: v.float() for k, v in load_file(str(folder / "adapters.safetensors")).items()}
    shards = sorted((folder / "llm").glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{folder / 'llm'} holds no safetensors")
    for shard in shards:
        weights.update({LLM_PREFIX + k: v.float() for k, v in load_file(str(shard)).items()})
    return meta, weights


def load_final(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load read_final's weights; an LLM with tied embeddings is saved without its output copy."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = getattr(model.llm.config, "tie_word_embeddings", False)
    if unexpected or [k for k in missing if not (tied and k == LLM_PREFIX + "lm_head.weight")]:
        raise KeyError(f"final weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tied:
        model.llm.tie_weights()


@dataclass
class TrainingState:
    """Where a cell's training stands: what a checkpoint holds besides the weights."""

    stage: int = 0  # index into STAGES; len(STAGES) once both are done
    step: int = 0  # optimizer steps done in that stage
    history: list[dict] = field(default_factory=list)  # one entry per logged window
    seconds: float = 0.0  # training time so far, earlier attempts included
    optimizer: dict | None = None  # the optimizer's state at a mid-stage checkpoint (single process)
    deepspeed_tag: str | None = None  # or, under DeepSpeed, the tag of its checkpoint (every rank's partition)
    truncated: dict[str, int] = field(default_factory=dict)  # per stage: rows cut at the LLM's maximum length
    # (loss, accuracy) of the steps since the last logged window: a checkpoint taken between two logs (on
    # Slurm's signal) keeps them, so the resumed run logs the same averages as an uninterrupted one
    window: list = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "TrainingState":
        return cls(**{k: saved[k] for k in cls.__dataclass_fields__ if k in saved})

    @property
    def optimizer_checkpoint(self) -> dict:
        return {"optimizer": self.optimizer, "deepspeed_tag": self.deepspeed_tag}

    @property
    def stage_name(self) -> str:
        return STAGES[self.stage] if self.stage < len(STAGES) else "done"


class Checkpointer:
    """A cell's checkpoints (`vlmscale.training.checkpoint` says what each holds); refuses ones written for another
    run key (spec or code)."""

    def __init__(self, folder: str | Path, key: str):
        self.path = Path(folder) / "last.pt"
        self.final = Path(folder) / "final"
        self.deepspeed_dir = Path(folder) / "deepspeed"  # DeepSpeed's checkpoints, one folder per tag
        self.run_key = key

    def load(self) -> tuple[TrainingState, dict | None]:
        """The state to resume from and the saved weights (None: start from scratch)."""
        if not self.path.exists():
            return TrainingState(), None
        try:
            saved = torch.load(self.path, weights_only=False)
        except Exception as exc:  # a torn or corrupt file must not kill the cell: start over, say why
            print(f"checkpoint {self.path} is unreadable ({exc}); training from scratch")
            return TrainingState(), None
        if saved.get("run_key", saved.get("cell_hash")) != self.run_key:
            print(f"checkpoint {self.path} belongs to another spec; training from scratch")
            return TrainingState(), None
        state = TrainingState.from_checkpoint(saved)
        if state.stage == len(STAGES) and not self.has_final():
            print(f"{self.path} says the cell is trained but {self.final} is missing; training from scratch")
            return TrainingState(), None
        return state, saved.get("model")

    def has_final(self) -> bool:
        meta = self.final / "final.json"
        return meta.is_file() and json.loads(meta.read_text()).get("run_key") == self.run_key

    def save(self, state: TrainingState, model: torch.nn.Module, optimizer: dict | None = None) -> None:
        """Mid-stage: stage 1 keeps the adapters it trains (the frozen LLM is rebuilt on resume), stage 2
        every weight; under DeepSpeed its checkpoint (`optimizer["deepspeed_tag"]`) holds the trained
        weights instead. A finished cell keeps the state alone (its weights are in final/)."""
        optimizer = optimizer or {}
        if state.stage >= len(STAGES) or optimizer.get("deepspeed_tag"):
            weights = None
        else:
            weights = model.state_dict() if state.stage > 0 else adapter_state(model)
        saved = {**asdict(state), **{"optimizer": None, "deepspeed_tag": None, **optimizer}}
        atomic_torch_save({**saved, "model": weights, "run_key": self.run_key}, self.path)
        self.prune_deepspeed(keep=saved["deepspeed_tag"])

    def prune_deepspeed(self, keep: str | None) -> None:
        """Remove DeepSpeed checkpoints that last.pt no longer names (after last.pt names the new one)."""
        if self.deepspeed_dir.is_dir():
            for tag in self.deepspeed_dir.iterdir():  # DeepSpeed also leaves its zero_to_fp32.py there
                if tag.is_dir() and tag.name != keep:
                    shutil.rmtree(tag, ignore_errors=True)

    def save_final(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        save_final(self.final.parent, model, self.run_key, dtype)

    def record_attempt(self, event: str, **fields) -> None:
        """Append to attempts.jsonl: every start (with the step it resumes from) and every finish, so
        a cell's history across kills, requeues and reruns can be audited."""
        line = {
            "event": event,
            "time": round(time.time(), 3),
            "run_key": self.run_key,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            **fields,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / "attempts.jsonl", "a") as fh:  # one short O_APPEND write per line
            fh.write(json.dumps(line) + "\n")
