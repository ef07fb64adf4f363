"""A trained cell's weights on disk, sized for a cluster.

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
from pathlib import Path

import torch

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
